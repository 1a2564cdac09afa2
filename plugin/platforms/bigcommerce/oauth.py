"""The BigCommerce app's install and callbacks: the auth callback's code traded for the store's
access token at BigCommerce's token endpoint, and the `signed_payload_jwt` of the load and
uninstall callbacks verified (HS256 with the client secret, audience the client id).

Neither the client secret nor a code, payload or access token ever shows in an error, a repr or
a log line.
"""

import time
from collections.abc import Collection, Mapping
from typing import Any

import httpx2
import jwt
import msgspec

from plugin.errors import PluginError
from plugin.platforms.bigcommerce.mapping import store_hash_of
from plugin.signatures import WebhookVerificationError

TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path, not a secret)
AUTHORIZATION_CODE = "authorization_code"
ISSUER = "bc"
_CLAIMS = ["exp", "nbf", "iat", "iss", "aud", "sub"]
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


class SignedPayloadError(WebhookVerificationError):
    """A `signed_payload_jwt` that does not check out; the message never holds a secret."""


class SignedPayload(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified `signed_payload_jwt` says: which store, which user, which JWT."""

    store_hash: str
    user_id: int | None
    owner_id: int | None
    jti: str | None
    expires_at: int
    url: str | None = None


def verify_signed_payload(
    token: str,
    *,
    client_id: str,
    client_secret: str,
    leeway: float = 5,
    now: float | None = None,
) -> SignedPayload:
    """Verify a load/uninstall callback's JWT: HS256 with the client secret, `aud` the client id,
    `iss` "bc", `exp` and `nbf` within `leeway` seconds of `now`, `sub` a `stores/{hash}`."""
    if not client_secret:
        raise ValueError("an empty BigCommerce client secret would accept forged payloads")
    if not token:
        raise SignedPayloadError("missing signed_payload_jwt")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            client_secret,
            algorithms=["HS256"],
            audience=client_id,
            issuer=ISSUER,
            options={
                "require": _CLAIMS,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise SignedPayloadError("signed_payload_jwt signature does not match") from None
    except jwt.InvalidAlgorithmError:
        raise SignedPayloadError("signed_payload_jwt is not signed with HS256") from None
    except jwt.InvalidAudienceError:
        raise SignedPayloadError("signed_payload_jwt is for another app (aud)") from None
    except jwt.InvalidIssuerError:
        raise SignedPayloadError("signed_payload_jwt is not issued by BigCommerce (iss)") from None
    except jwt.MissingRequiredClaimError as error:
        raise SignedPayloadError(f"signed_payload_jwt lacks the {error.claim} claim") from None
    except jwt.InvalidTokenError:
        raise SignedPayloadError("signed_payload_jwt is malformed") from None
    current = time.time() if now is None else now
    expires_at = _seconds(claims, "exp")
    if expires_at <= current - leeway:
        raise SignedPayloadError(
            f"signed_payload_jwt expired {current - expires_at:.0f} s ago, "
            f"beyond the {leeway:g} s leeway"
        )
    not_before = _seconds(claims, "nbf")
    if not_before > current + leeway:
        raise SignedPayloadError(
            f"signed_payload_jwt is valid only in {not_before - current:.0f} s, "
            f"beyond the {leeway:g} s leeway"
        )
    subject = claims["sub"]
    store_hash = store_hash_of(subject) if isinstance(subject, str) else None
    if store_hash is None:
        raise SignedPayloadError("signed_payload_jwt sub is not stores/{store hash}")
    jti = claims.get("jti")
    url = claims.get("url")
    return SignedPayload(
        store_hash=store_hash,
        user_id=_user_id(claims.get("user")),
        owner_id=_user_id(claims.get("owner")),
        jti=jti if isinstance(jti, str) and jti else None,
        expires_at=expires_at,
        url=url if isinstance(url, str) else None,
    )


def _seconds(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SignedPayloadError(f"signed_payload_jwt {name} is not an integer of unix seconds")
    return value


def _user_id(user: object) -> int | None:
    if isinstance(user, dict):
        value = user.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
