"""BigCommerce's two ways of telling its requests from anyone's, pure functions over bytes and
headers:

- the hook header: the custom header the app sets on its webhook subscriptions, which
  BigCommerce sends back with every delivery (a per-store value derived from the shop's webhook
  secret, compared in constant time);
- the `signed_payload_jwt` of the load and uninstall callbacks (HS256 with the client secret,
  audience the client id).

A failed check raises `WebhookVerificationError` (`SignedPayloadError` for the callbacks) with a
one-line reason that never contains a secret or a payload.
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
import msgspec

from plugin.platforms.bigcommerce.store_hash import is_store_hash, store_hash_of
from plugin.signatures import WebhookVerificationError

ISSUER = "bc"
_CLAIMS = ["exp", "nbf", "iat", "iss", "aud", "sub"]
# The custom header the app sets on its hooks (`headers` of POST/PUT /v3/hooks), which BigCommerce
# sends back with every delivery: a per-store secret, the way BigCommerce documents to tell its
# deliveries from anyone's. Its value is derived from the shop's webhook secret (sealed in the
# vault, rotated with it), never the secret itself.
HOOK_HEADER = "X-Klarna-Capture-Hook-Secret"
_HOOK_HEADER_LABEL = b"klarna-capture bigcommerce hook header v1"
_MAX_HOOK_HEADER = 128


def hook_header_value(store_hash: str, key: bytes) -> str:
    """The value of `HOOK_HEADER` for the store whose webhook key is `key`: the store hash, then an
    HMAC of a fixed label, so that the header, which BigCommerce stores and shows to the app,
    cannot sign anything. The hash in front names whose key to compare it with before anything of
    the body is read."""
    digest = hmac.new(key, _HOOK_HEADER_LABEL, hashlib.sha256).digest()
    return f"{store_hash}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def hook_header_store(received: str | None) -> str | None:
    """The store hash a hook header names, if it has the form of one; None otherwise."""
    if not received or len(received) > _MAX_HOOK_HEADER:
        return None
    store_hash, dot, _ = received.partition(".")
    return store_hash if dot and is_store_hash(store_hash) else None


def hook_header_matches(keys: Sequence[bytes], store_hash: str, received: str) -> bool:
    """Whether `received` is `store_hash`'s hook header under any of `keys` (current and
    rotated-out ones in their grace period), compared in constant time."""
    # Starlette decodes header values as latin-1: this gives back the bytes that came.
    raw = received.encode("latin-1", errors="replace")
    matched = False
    for key in keys:
        # Every key is compared (no early exit): which one matched does not show in the timing.
        matched |= hmac.compare_digest(hook_header_value(store_hash, key).encode(), raw)
    return matched


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
