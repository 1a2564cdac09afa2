"""What the pipeline asks of a storefront app (an adapter that must call the storefront's API to
know what shipped, and writes the outcome back onto the storefront's order)."""

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, cast, get_args

import httpx2
import msgspec
from starlette.routing import BaseRoute

from plugin.config import Settings
from plugin.events import FulfillmentEvent
from plugin.klarna.models import ShippingMethod
from plugin.retries import RetryPolicy, bounded_wait
from plugin.shops import Shops
from plugin.store import Store
from plugin.store.records import CaptureRecord, Delivery, Shop, ShopOptions
from plugin.web.forms import SettingsPage


class StorefrontError(Exception):
    """A storefront call or mapping that failed; `retryable` says whether later may work."""

    def __init__(
        self,
        step: str,
        code: str,
        messages: Sequence[str],
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        self.step = step
        self.code = code
        self.messages = list(messages)
        self.retryable = retryable
        self.retry_after = bounded_wait(retry_after)
        super().__init__(f"{step}: {code}: " + "; ".join(self.messages))


class ApiError(Exception):
    """A failed call to a storefront's API; `retryable` says whether the same call may succeed
    later. Each platform's client raises its own subclass, named for the platform."""

    platform: ClassVar[str] = "storefront"

    def __init__(
        self,
        operation: str,
        *,
        status: int | None,
        code: str,
        messages: Sequence[str] = (),
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.code = code
        self.messages = tuple(messages)
        self.retryable = retryable
        self.retry_after = bounded_wait(retry_after)
        where = f"HTTP {status}" if status is not None else "no answer"
        text = f"{self.platform} {operation} failed: {where} {code}"
        if self.messages:
            text += ": " + "; ".join(self.messages)
        super().__init__(" ".join(text.split()))

    def failure(self, step: str) -> "StorefrontError":
        """This failure as the pipeline takes it: code `<PLATFORM>_<code>`, same retry."""
        return StorefrontError(
            step,
            f"{self.platform.upper()}_{self.code}",
            [str(self)],
            retryable=self.retryable,
            retry_after=self.retry_after,
        )


def shipping_method(options: ShopOptions) -> ShippingMethod | None:
    """The Klarna shipping method the shop chose for its tracking entries, if it is one."""
    method = options.shipping_method
    return cast(ShippingMethod, method) if method in get_args(ShippingMethod) else None


async def refuse_if_captured_shipments_are_gone(
    store: Store, shop: Shop, order_id: str, shipped: Collection[str], *, what: str
) -> None:
    """Refuse to map another shipment of an order while one of its captured shipments is no
    longer shipped there (deleted, cancelled): the storefront now counts its goods and fees as
    unshipped, so a new shipment would capture them a second time."""
    gone = sorted(
        record.fulfillment_id
        for record in await store.order_captures(shop.id, [order_id])
        if record.state == "captured" and record.fulfillment_id not in shipped
    )
    if gone:
        raise StorefrontError(
            "map",
            f"CAPTURED_{what.upper()}_GONE",
            [
                f"{what} {', '.join(gone)} of order {order_id} was captured and is no longer "
                "shipped on the storefront: another shipment would capture its goods again; "
                "settle it at Klarna (refund), then retry"
            ],
            retryable=False,
        )


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    """A fulfilment that is not to be captured (cancelled, say), and why."""

    reason: str


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    """The shipment to capture; `remap` maps it again in another currency (the Klarna order's),
    raising StorefrontError when the storefront order has no amounts in that currency."""

    event: FulfillmentEvent
    remap: Callable[[str], FulfillmentEvent] | None = None


class Storefront(Protocol):
    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        """The shipment a fulfilment's deliveries describe. With a capture on record, only what
        can still change (tracking) needs to be right."""
        ...

    async def write_back(self, shop: Shop, order_id: str) -> None:
        """Put the order's capture status on the storefront order, from the ledger as it now
        stands (so a retried or late write-back never goes backwards)."""
        ...


class StorefrontApp:
    """What every storefront app holds: the settings, the shops (for their sealed API
    credentials), the store (the ledger its write-back reads) and the HTTP client for its API."""

    def __init__(
        self,
        settings: Settings,
        shops: Shops,
        http: httpx2.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.shops = shops
        self.store: Store = shops.store
        self.http = http
        self.retry = retry


StorefrontFactory = Callable[..., Storefront]


@dataclass(frozen=True, kw_only=True)
class Platform:
    """One storefront platform, as the rest of the service sees it: everything that is not the
    platform's own business goes through this description, and `plugin.platforms.registry`
    lists them. A new platform is one package under `plugin/platforms/` and one registry line.

    - `name`: as shops, URLs (/webhooks/<name>...) and the CLI write it.
    - `label`: as the merchant's pages write it.
    - `routes`: its webhook receiver and, for marketplace apps, its install and admin entry.
    - `storefront`: the adapter the pipeline calls, for platforms whose shipments and write-backs
      go through the storefront's API (built with the settings, the shops, an HTTP client and a
      retry policy); None where the webhook holds the whole shipment.
    - `merchant_hosted`: its API lives at an address the merchant enters, not one the operator
      sets, so its calls go through the address-guarded client.
    - `options`: the shop options (ShopOptions' fields) its settings page offers beyond the
      common ones.
    - `domain_format`: how its storefront domains are written; a domain not in it is no shop,
      answered without a lookup.
    - `settings_page`: what its shops' settings page adds to the common fields (its fields and
      their checks, its partial, who may frame the page), from its `settings.py`.
    - `pages`: the paths of its own pages beyond the merchant's (its install and admin entries),
      which get the pages' security headers.
    """

    name: str
    label: str
    routes: Callable[[], Sequence[BaseRoute]]
    storefront: StorefrontFactory | None = None
    merchant_hosted: bool = False
    options: tuple[str, ...] = ()
    domain_format: Callable[[str], bool] | None = None
    settings_page: SettingsPage = field(default_factory=SettingsPage)
    pages: tuple[str, ...] = ()
