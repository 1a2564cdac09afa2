"""The root of every exception the project defines, its two shared branches, and the shape a
failure is stored in.

Each class lives beside the code that raises it (a platform's API error in its package, the
store's in the store); only the root and the branches several packages share live here. The
whole tree:

PluginError                         anything of ours; `except PluginError` catches them all
├── OperationError                  an operation that failed; `retryable`: whether the same
│   │                               operation, tried again later, may succeed; `retry_after`:
│   │                               how long to wait before that, when known
│   ├── KlarnaError                 plugin.klarna.errors: a Klarna call
│   ├── ApiError                    plugin.platforms.base: a storefront API call
│   │   ├── ShopifyError            plugin.platforms.shopify.api
│   │   ├── WooCommerceError        plugin.platforms.woocommerce.adapter
│   │   └── BigCommerceError        plugin.platforms.bigcommerce.api
│   ├── StorefrontError             plugin.platforms.base: a shipment an adapter cannot give
│   ├── CaptureRefused              plugin.capture: a capture the planner will not make
│   ├── RefundRefused               plugin.refunds: a refund the planner will not make
│   ├── StatusUrlError              plugin.pipeline.reports: posting to a shop's status URL
│   └── JobFailure                  plugin.worker: how a job failed, as its handler says
│       └── ShipmentFailure         plugin.pipeline.failures: one the shop hears of
├── MappingError (+ ValueError)     a storefront payload that maps to no shipment
│   ├── ShopifyMappingError         plugin.platforms.shopify.mapping
│   ├── WooCommerceMappingError     plugin.platforms.woocommerce.mapping
│   └── BigCommerceMappingError     plugin.platforms.bigcommerce.mapping
├── WebhookVerificationError        plugin.signatures: a signature that does not check out
│   ├── ShopifyRequestError         plugin.platforms.shopify.signatures
│   └── SignedPayloadError          plugin.platforms.bigcommerce.signatures
├── ShopifyOAuthError               plugin.platforms.shopify.oauth
├── BigCommerceOAuthError           plugin.platforms.bigcommerce.oauth
├── StoreUnavailable                plugin.store.base: the database, not the call, is the trouble
├── ConfigError                     plugin.config
├── VaultError                      plugin.vault
├── MoneyError (+ ValueError)       plugin.money
├── BodyRefused                     plugin.webhooks
├── ShopAddRefused                  plugin.platforms.base: a `shop add` that cannot go on
├── LinkError, InstallStateError    plugin.web.auth
├── HeadTooLarge, CannotListen      plugin.server
├── DeadlineExceeded, ResponseTooLarge, AddressRefused
│                                   plugin.outbound: also httpx2's TimeoutException,
│                                   RemoteProtocolError and ConnectError, as httpx2 callers catch
├── Refused                         plugin.web.pages: a platform page's short refusal
├── BadQuery                        plugin.web.activity: an activity query string refused
└── private ones                    the sandboxes' own refusals

tests/test_errors.py pins the names exported here and walks every module under plugin/: an
exception class that does not derive from PluginError fails it.
"""

from collections.abc import Sequence

import msgspec

__all__ = ["JobError", "MappingError", "OperationError", "PluginError", "join_messages"]


class PluginError(Exception):
    """The root: every exception the project defines derives from it."""


class OperationError(PluginError):
    """An operation that failed. `retryable`: whether the same operation (the same idempotency
    key, the same request) may succeed when tried again later; `retry_after`: seconds to wait
    before that, when known (the errors of outside calls bound what the other side said)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class MappingError(PluginError, ValueError):
    """A storefront payload that maps to no shipment; a ValueError too, as a bad value."""


class JobError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a job failed, as a dead letter stores it and an operator reads it."""

    step: str
    error_code: str
    error_messages: list[str] = []
    correlation_id: str | None = None
    status: int | None = None

    def line(self) -> str:
        text = f"{self.step}: {self.error_code}"
        if self.error_messages:
            text += ": " + join_messages(self.error_messages)
        if self.correlation_id:
            text += f" (correlation_id {self.correlation_id})"
        return text


def join_messages(messages: Sequence[str]) -> str:
    """Messages in one line: sentences follow each other, fragments are separated by '; '."""
    text = ""
    for message in messages:
        message = message.strip()
        if text:
            text += " " if text.endswith((".", "!", "?")) else "; "
        text += message
    return text
