"""BigCommerce's token endpoint: the auth callback's code traded for the store's access token
(the load and uninstall callbacks' `signed_payload_jwt` is checked in signatures.py).

Neither the client secret nor a code or access token ever shows in an error, a repr or a log
line.
"""

from collections.abc import Collection

import httpx2
import msgspec

from plugin.errors import PluginError
from plugin.platforms.bigcommerce.store_hash import store_hash_of

TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path, not a secret)
AUTHORIZATION_CODE = "authorization_code"
_MAX_DESCRIPTION = 200


class BigCommerceOAuthError(PluginError):
    """The token endpoint did not hand out a token: `status` is None when it was not reached."""

    def __init__(self, *, status: int | None, error: str, description: str = "") -> None:
        self.status = status
        self.error = error
        self.description = description
        where = f"HTTP {status}" if status is not None else "no answer"
        text = f"BigCommerce token request failed: {where} {error}"
        if description:
            text += f": {description}"
        super().__init__(" ".join(text.split()))


class AccessToken(msgspec.Struct, frozen=True, kw_only=True):
    """The token endpoint's answer: the store's access token, its scopes and its store."""

    access_token: str
    scope: str = ""
    context: str = ""

    @property
    def store_hash(self) -> str | None:
        return store_hash_of(self.context)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scopes; a `_read_only` one is implied by its full (modify) scope."""
        granted = {part for part in self.scope.replace(",", " ").split() if part}
        implied = {f"{name}_read_only" for name in granted if not name.endswith("_read_only")}
        return frozenset(granted | implied)

    def covers(self, needed: Collection[str]) -> bool:
        return set(needed) <= self.scopes

    def __repr__(self) -> str:
        return f"AccessToken(scope={self.scope!r}, context={self.context!r})"


class _Refusal(msgspec.Struct):
    error: str = "unknown_error"
    error_description: str = ""


_token_decoder = msgspec.json.Decoder(AccessToken)
_refusal_decoder = msgspec.json.Decoder(_Refusal)


async def exchange_code(
    http: httpx2.AsyncClient,
    *,
    login_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    scope: str,
    context: str,
    redirect_uri: str,
) -> AccessToken:
    """The auth callback's code (with its scope and context) for the store's access token."""
    body = {
        "client_id": client_id,
        "client_secret": client_secret,
        "code": code,
        "scope": scope,
        "context": context,
        "grant_type": AUTHORIZATION_CODE,
        "redirect_uri": redirect_uri,
    }
    try:
        answer = await http.post(
            login_url.rstrip("/") + TOKEN_PATH,
            json=body,
            headers={"Accept": "application/json"},
        )
    except httpx2.HTTPError as exc:
        # The exception's text may quote the request; only its kind is kept.
        raise BigCommerceOAuthError(status=None, error=type(exc).__name__) from None
    if answer.status_code != 200:
        try:
            refusal = _refusal_decoder.decode(answer.content)
        except msgspec.MsgspecError:
            refusal = _Refusal(error="unreadable_answer")
        raise BigCommerceOAuthError(
            status=answer.status_code,
            error=refusal.error[:_MAX_DESCRIPTION],
            description=refusal.error_description[:_MAX_DESCRIPTION],
        )
    try:
        token = _token_decoder.decode(answer.content)
    except msgspec.MsgspecError:
        raise BigCommerceOAuthError(status=200, error="unreadable_answer") from None
    if not token.access_token:
        raise BigCommerceOAuthError(status=200, error="empty_access_token")
    return token


# --- signed_payload_jwt ---------------------------------------------------------------------------
