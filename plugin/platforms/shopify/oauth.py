"""Shopify's OAuth token endpoint: an install's authorization code, or an embedded app's session
token (token exchange), traded for the shop's offline Admin API access token.

Neither the client secret nor a code, session token or access token ever shows in an error, a
repr or a log line.
"""

from collections.abc import Collection, Mapping

import httpx2
import msgspec

from plugin.errors import PluginError

# OAuth identifiers, not secrets.
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"  # noqa: S105

_MAX_DESCRIPTION = 200


class ShopifyOAuthError(PluginError):
    """The token endpoint did not hand out a token: `status` is None when it was not reached."""

    def __init__(
        self, grant: str, *, status: int | None, error: str, description: str = ""
    ) -> None:
        self.grant = grant
        self.status = status
        self.error = error
        self.description = description
        where = f"HTTP {status}" if status is not None else "no answer"
        text = f"Shopify {grant} failed: {where} {error}"
        if description:
            text += f": {description}"
        super().__init__(" ".join(text.split()))


class AccessToken(msgspec.Struct, frozen=True):
    access_token: str
    scope: str

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scopes; Shopify lists `write_x` alone when it grants `read_x` too."""
        granted = {part.strip() for part in self.scope.split(",") if part.strip()}
        implied = {
            "read_" + name.removeprefix("write_") for name in granted if name.startswith("write_")
        }
        return frozenset(granted | implied)

    def covers(self, needed: Collection[str]) -> bool:
        return set(needed) <= self.scopes

    def __repr__(self) -> str:
        return f"AccessToken(scope={self.scope!r})"


class _Refusal(msgspec.Struct):
    error: str = "unknown_error"
    error_description: str = ""


_token_decoder = msgspec.json.Decoder(AccessToken)
_refusal_decoder = msgspec.json.Decoder(_Refusal)


async def exchange_code(
    http: httpx2.AsyncClient, *, admin_url: str, client_id: str, client_secret: str, code: str
) -> AccessToken:
    """The authorization code grant of an install; `admin_url` is the shop's admin base URL."""
    body = {"client_id": client_id, "client_secret": client_secret, "code": code}
    return await _token(http, admin_url, "authorization code grant", body)


async def exchange_session_token(
    http: httpx2.AsyncClient,
    *,
    admin_url: str,
    client_id: str,
    client_secret: str,
    session_token: str,
) -> AccessToken:
    """Token exchange: an embedded app's verified session token for an offline access token."""
    body = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": session_token,
        "subject_token_type": ID_TOKEN_TYPE,
        "requested_token_type": OFFLINE_TOKEN_TYPE,
    }
    return await _token(http, admin_url, "token exchange", body)


async def _token(
    http: httpx2.AsyncClient, admin_url: str, grant: str, body: Mapping[str, str]
) -> AccessToken:
    try:
        answer = await http.post(
            f"{admin_url}/admin/oauth/access_token",
            json=dict(body),
            headers={"Accept": "application/json"},
        )
    except httpx2.HTTPError as exc:
        # The exception's text may quote the request; only its kind is kept.
        raise ShopifyOAuthError(grant, status=None, error=type(exc).__name__) from None
    if answer.status_code != 200:
        try:
            refusal = _refusal_decoder.decode(answer.content)
        except msgspec.DecodeError:
            refusal = _Refusal(error="unreadable_answer")
        raise ShopifyOAuthError(
            grant,
            status=answer.status_code,
            error=refusal.error[:_MAX_DESCRIPTION],
            description=refusal.error_description[:_MAX_DESCRIPTION],
        )
    try:
        token = _token_decoder.decode(answer.content)
    except msgspec.DecodeError:
        raise ShopifyOAuthError(grant, status=200, error="unreadable_answer") from None
    if not token.access_token:
        raise ShopifyOAuthError(grant, status=200, error="empty_access_token")
    return token
