"""The signature schemes of inbound requests, pure functions over bytes, headers and queries.

Standard Webhooks deliveries, and from Shopify: webhooks, the OAuth/admin query `hmac`, shop
domains and embedded-app session tokens. A failed check raises `WebhookVerificationError`
(`ShopifyRequestError`, a subclass, for Shopify's admin requests) with a one-line reason that
never contains a secret or an expected signature.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
import msgspec

from plugin.errors import PluginError


class WebhookVerificationError(PluginError):
    """A webhook whose signature, headers or timestamp do not check out."""


# Standard Webhooks (spec v1.0.0; kept in tests/reference/standard-webhooks/standard-webhooks.md)

_WHSEC_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 24
STANDARD_TOLERANCE_SECONDS = 300.0
_ID_HEADER = "webhook-id"
_TIMESTAMP_HEADER = "webhook-timestamp"
_SIGNATURE_HEADER = "webhook-signature"
_SYMMETRIC_VERSION = "v1"
# Twelve digits reach the year 33658; the cap keeps int() away from attacker-sized numbers.
_MAX_TIMESTAMP_DIGITS = 12


def parse_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional)."""
    encoded = secret.strip().removeprefix(_WHSEC_PREFIX)
    try:
        # Some senders drop the base64 padding; restore it rather than refuse the secret.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("webhook secret is not base64 after the optional whsec_ prefix") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"webhook secret holds {len(key)} bytes, at least {_MIN_SECRET_BYTES} needed"
        )
    return key


def new_secret() -> str:
    return _WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@functools.lru_cache(maxsize=4096)
def _keyed_hmac(key: bytes) -> hmac.HMAC:
    # Keying HMAC costs more than hashing a 1 KB body; do it once per secret, then copy.
    return hmac.new(key, digestmod=hashlib.sha256)


def _digest(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    mac = _keyed_hmac(key).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return mac.digest()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message: `v1,<base64 HMAC-SHA256>`."""
    return (
        f"{_SYMMETRIC_VERSION},{base64.b64encode(_digest(key, msg_id, timestamp, body)).decode()}"
    )


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise WebhookVerificationError(f"missing {name} header")
    return value


def _check_timestamp(raw: str, now: float, tolerance: float) -> None:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_TIMESTAMP_DIGITS):
        raise WebhookVerificationError(f"{_TIMESTAMP_HEADER} is not an integer of unix seconds")
    age = now - int(raw)
    if age > tolerance:
        raise WebhookVerificationError(
            f"{_TIMESTAMP_HEADER} is {age:.0f} s old, beyond the {tolerance:g} s tolerance"
        )
    if -age > tolerance:
        raise WebhookVerificationError(
            f"{_TIMESTAMP_HEADER} is {-age:.0f} s ahead, beyond the {tolerance:g} s tolerance"
        )


def _v1_signatures(header: str) -> list[bytes]:
    signatures = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != _SYMMETRIC_VERSION:
            continue  # v1a (ed25519) and future versions are not ours to check
        try:
            signatures.append(binascii.a2b_base64(encoded, strict_mode=True))
        except binascii.Error:
            continue
    return signatures


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = STANDARD_TOLERANCE_SECONDS,
) -> str:
    """Check a Standard Webhooks delivery over its raw body; return its `webhook-id`.

    `headers` is looked up by lowercase name (Starlette's `Headers` ignores case anyway). Any `v1`
    signature matching any of `keys` is accepted, so a secret can rotate without downtime.
    """
    msg_id = _header(headers, _ID_HEADER)
    raw_timestamp = _header(headers, _TIMESTAMP_HEADER)
    signature_header = _header(headers, _SIGNATURE_HEADER)
    _check_timestamp(raw_timestamp, time.time() if now is None else now, tolerance)
    candidates = _v1_signatures(signature_header)
    if candidates:
        for key in keys:
            # Over the timestamp as sent: that is the text the sender signed.
            expected = _digest(key, msg_id, raw_timestamp, body)
            for candidate in candidates:
                if hmac.compare_digest(expected, candidate):
                    return msg_id
    raise WebhookVerificationError(
        f"no {_SYMMETRIC_VERSION} signature in {_SIGNATURE_HEADER} matches a known secret"
    )


# Shopify: webhooks, the OAuth/admin query `hmac`, shop domains and embedded-app session tokens,
# all keyed with the app's client secret (its UTF-8 bytes for the HMACs).


class ShopifyRequestError(WebhookVerificationError):
    """An admin request from Shopify (query `hmac` or session token) that does not check out.

    A `WebhookVerificationError`, so one `except` clause covers every signature check.
    """


class ShopifySession(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified embedded-app session token says: which shop, which staff user."""

    shop: str
    user_id: str | None
    session_id: str | None
    expires_at: int


_SHOPIFY_HMAC_HEADER = "X-Shopify-Hmac-Sha256"
_SHOPIFY_QUERY_SKEW_SECONDS = 60.0
_SHOPIFY_UNSIGNED_PARAMS = frozenset({"hmac", "signature"})
_SHOPIFY_ARRAY_SUFFIX = "[]"
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SHOP_DOMAIN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]*\.myshopify\.com")
_SESSION_TOKEN_CLAIMS = ["exp", "nbf", "iss", "dest", "aud"]


def _shopify_keys(secrets: Sequence[bytes]) -> Sequence[bytes]:
    if not all(secrets):
        # Anyone can compute an HMAC under the empty key.
        raise ValueError("an empty Shopify client secret would accept forged requests")
    return secrets


def _shopify_digest(key: bytes, message: bytes) -> bytes:
    mac = _keyed_hmac(key).copy()
    mac.update(message)
    return mac.digest()


def verify_shopify_webhook(secrets: Sequence[bytes], header: str | None, body: bytes) -> None:
    """Check `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body) against any secret."""
    if not header:
        raise WebhookVerificationError(f"missing {_SHOPIFY_HMAC_HEADER} header")
    try:
        received = binascii.a2b_base64(header, strict_mode=True)
    except binascii.Error:
        received = b""
    if len(received) != hashlib.sha256().digest_size:
        raise WebhookVerificationError(f"{_SHOPIFY_HMAC_HEADER} is not a base64 SHA-256 digest")
    for key in _shopify_keys(secrets):
        if hmac.compare_digest(_shopify_digest(key, body), received):
            return
    raise WebhookVerificationError(f"{_SHOPIFY_HMAC_HEADER} matches no known secret")


def _escape_query(text: str, *, key: bool) -> str:
    # Shopify's rule: `%` and `&` are escaped in keys and values, `=` in keys only.
    text = text.replace("%", "%25").replace("&", "%26")
    return text.replace("=", "%3D") if key else text


def _shopify_query_message(pairs: Sequence[tuple[str, str]]) -> bytes:
    # The decoded pairs without `hmac`/`signature`, each `k=v` escaped, sorted, joined with `&`;
    # repeated `key[]` values become one `key=["v1", "v2"]`. Any other repeat is ambiguous.
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in _SHOPIFY_UNSIGNED_PARAMS:
            values.setdefault(name, []).append(value)
    signed: dict[str, str] = {}
    for name, found in values.items():
        if name.endswith(_SHOPIFY_ARRAY_SUFFIX):
            name, value = name.removesuffix(_SHOPIFY_ARRAY_SUFFIX), json.dumps(found)
        elif len(found) > 1:
            raise ShopifyRequestError("query repeats a parameter that is not a key[] array")
        else:
            value = found[0]
        if name in signed:
            raise ShopifyRequestError("query has both a parameter and its key[] array")
        signed[name] = value
    encoded = sorted(
        f"{_escape_query(name, key=True)}={_escape_query(value, key=False)}"
        for name, value in signed.items()
    )
    return "&".join(encoded).encode()


def _check_query_timestamp(raw: str | None, now: float, max_age: float) -> None:
    if raw is None:
        raise ShopifyRequestError("missing timestamp parameter")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_TIMESTAMP_DIGITS):
        raise ShopifyRequestError("timestamp parameter is not an integer of unix seconds")
    age = now - int(raw)
    if age > max_age:
        raise ShopifyRequestError(f"timestamp is {age:.0f} s old, beyond the {max_age:g} s limit")
    if -age > _SHOPIFY_QUERY_SKEW_SECONDS:
        raise ShopifyRequestError(
            f"timestamp is {-age:.0f} s ahead, beyond the {_SHOPIFY_QUERY_SKEW_SECONDS:g} s skew"
        )


def verify_shopify_query(
    secrets: Sequence[bytes],
    query: Sequence[tuple[str, str]] | Mapping[str, str],
    *,
    now: float | None = None,
    max_age: float = 300,
) -> None:
    """Check the `hmac` (hex HMAC-SHA256) and `timestamp` of an OAuth or admin-link query.

    Pass the URL-decoded pairs, e.g. Starlette's `request.query_params.multi_items()`: a plain
    mapping keeps one value per key, so it cannot carry `ids[]` arrays.
    """
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    received_hex = [value for name, value in pairs if name == "hmac"]
    if not received_hex or not received_hex[0]:
        raise ShopifyRequestError("missing hmac parameter")
    if len(received_hex) > 1 or not _HEX_SHA256.fullmatch(received_hex[0]):
        raise ShopifyRequestError("hmac parameter is not one hex SHA-256 digest")
    timestamps = [value for name, value in pairs if name == "timestamp"]
    _check_query_timestamp(
        timestamps[0] if timestamps else None, time.time() if now is None else now, max_age
    )
    message = _shopify_query_message(pairs)
    received = bytes.fromhex(received_hex[0])
    for key in _shopify_keys(secrets):
        if hmac.compare_digest(_shopify_digest(key, message), received):
            return
    raise ShopifyRequestError("hmac parameter matches no known secret")


def is_shop_domain(shop: str) -> bool:
    """Whether `shop` is exactly `<name>.myshopify.com` (no scheme, path, port or newline)."""
    return _SHOP_DOMAIN.fullmatch(shop) is not None


def _decode_session_token(token: str, client_id: str, secrets: Sequence[str]) -> dict[str, Any]:
    if not all(secrets):
        raise ValueError("an empty Shopify client secret would accept forged session tokens")
    for secret in secrets:
        try:
            # The clock checks happen in the caller, against its `now`.
            return jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                audience=client_id,
                options={
                    "require": _SESSION_TOKEN_CLAIMS,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            continue  # perhaps signed with the other secret during a rotation
        except jwt.InvalidAlgorithmError:
            raise ShopifyRequestError("session token is not signed with HS256") from None
        except jwt.InvalidAudienceError:
            raise ShopifyRequestError("session token is for another app (aud)") from None
        except jwt.MissingRequiredClaimError as error:
            raise ShopifyRequestError(f"session token lacks the {error.claim} claim") from None
        except jwt.InvalidTokenError:
            raise ShopifyRequestError("session token is malformed") from None
    raise ShopifyRequestError("session token signature matches no known secret")


def _claim_seconds(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShopifyRequestError(f"session token {name} is not an integer of unix seconds")
    return value


def _optional_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ShopifyRequestError(f"session token {name} is not a string")


def _session_shop(claims: Mapping[str, Any]) -> str:
    dest, iss = claims["dest"], claims["iss"]
    if not isinstance(dest, str) or not isinstance(iss, str):
        raise ShopifyRequestError("session token iss or dest is not a string")
    shop = dest.removeprefix("https://")
    if shop == dest or not is_shop_domain(shop):
        raise ShopifyRequestError("session token dest is not https://<shop>.myshopify.com")
    # Compared as text: a URL parser would forgive tabs, newlines and ports.
    if iss != dest and not iss.startswith(dest + "/"):
        raise ShopifyRequestError("session token iss host is not its dest host")
    return shop


def verify_shopify_session_token(
    token: str,
    *,
    client_id: str,
    secrets: Sequence[str],
    leeway: float = 5,
    now: float | None = None,
) -> ShopifySession:
    """Verify an embedded-app session token (HS256 JWT) and return who it speaks for.

    PyJWT checks the algorithm, the signature against any of `secrets` and the audience;
    `exp` and `nbf` are checked here against `now`, allowing `leeway` seconds of clock skew.
    """
    claims = _decode_session_token(token, client_id, secrets)
    current = time.time() if now is None else now
    expires_at = _claim_seconds(claims, "exp")
    if expires_at <= current - leeway:
        raise ShopifyRequestError(
            f"session token expired {current - expires_at:.0f} s ago, "
            f"beyond the {leeway:g} s leeway"
        )
    not_before = _claim_seconds(claims, "nbf")
    if not_before > current + leeway:
        raise ShopifyRequestError(
            f"session token is valid only in {not_before - current:.0f} s, "
            f"beyond the {leeway:g} s leeway"
        )
    return ShopifySession(
        shop=_session_shop(claims),
        user_id=_optional_text(claims, "sub"),
        session_id=_optional_text(claims, "sid"),
        expires_at=expires_at,
    )
