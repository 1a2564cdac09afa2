"""Klarna Order management: wire types, the async client and its error type."""

from plugin.klarna.client import (
    Credentials,
    KlarnaClient,
    base_url,
    make_http_client,
    tls_context,
)
from plugin.klarna.errors import KlarnaError
from plugin.retries import RetryPolicy

__all__ = [
    "Credentials",
    "KlarnaClient",
    "KlarnaError",
    "RetryPolicy",
    "base_url",
    "make_http_client",
    "tls_context",
]
