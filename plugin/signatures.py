"""Standard Webhooks, the signature scheme any platform may use (the Standard Webhooks
platform, BigCommerce's signed hooks), pure functions over bytes and headers; and
`WebhookVerificationError`, which every platform's own scheme raises (plugin/platforms/<name>/
signatures.py), so one `except` clause covers every signature check. Its one-line reason never
contains a secret or an expected signature.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

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
MAX_TIMESTAMP_DIGITS = 12


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
def keyed_hmac(key: bytes) -> hmac.HMAC:
    # Keying HMAC costs more than hashing a 1 KB body; do it once per secret, then copy.
    return hmac.new(key, digestmod=hashlib.sha256)


def _digest(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    mac = keyed_hmac(key).copy()
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
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_TIMESTAMP_DIGITS):
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
