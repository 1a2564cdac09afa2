"""WooCommerce's webhook signature: `X-WC-Webhook-Signature`, the base64 HMAC-SHA256 of the raw
body keyed with the webhook's Secret (the shop's `whsec_...` string, as the merchant pasted it)."""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from plugin.platforms.woocommerce.payloads import SIGNATURE_HEADER
from plugin.signatures import WebhookVerificationError


def webhook_secret(key: bytes) -> bytes:
    """The secret WooCommerce signs with, as the UTF-8 bytes it HMACs: the shop's `whsec_...`
    string itself, which the merchant pastes into the webhook's Secret field. (The shop stores
    the decoded key; the string is its `whsec_` + base64 form, exactly as it was shown.)"""
    return ("whsec_" + base64.b64encode(key).decode()).encode()


def verify_signature(secrets: Sequence[bytes], header: str | None, body: bytes) -> None:
    """Check `X-WC-Webhook-Signature` (base64 HMAC-SHA256 of the raw body) against any secret."""
    if not header:
        raise WebhookVerificationError(f"missing {SIGNATURE_HEADER} header")
    try:
        received = binascii.a2b_base64(header.strip(), strict_mode=True)
    except binascii.Error:
        received = b""
    if len(received) != hashlib.sha256().digest_size:
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} is not a base64 SHA-256 digest")
    for secret in secrets:
        if not secret:
            raise ValueError("an empty webhook secret would accept forged deliveries")
        if hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), received):
            return
    raise WebhookVerificationError(f"{SIGNATURE_HEADER} matches no webhook secret of this shop")


def sign(secret: bytes, body: bytes) -> str:
    """The `X-WC-Webhook-Signature` WooCommerce sends with `body`."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()
