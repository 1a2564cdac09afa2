"""What the pipeline asks of a platform's adapter (the shipment its deliveries describe, and the
outcome written back onto the storefront's order where there is one), the errors adapters and
API clients raise, and the description each platform gives the rest of the service."""

import argparse
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast, get_args

import httpx2
import msgspec
from starlette.routing import BaseRoute

from plugin.config import Settings
from plugin.context import ServiceContext
from plugin.errors import OperationError, PluginError
from plugin.events import FulfillmentEvent, RefundEvent
from plugin.klarna.models import ShippingMethod
from plugin.retries import RetryPolicy, bounded_wait
from plugin.shops import Shops
from plugin.store import Store
from plugin.store.records import (
    CaptureRecord,
    Delivery,
    OrderOperation,
    OrderState,
    Shop,
    ShopOptions,
)
from plugin.web.forms import SettingsPage, time_zone_problem

log = logging.getLogger("plugin.platforms")


class StorefrontError(OperationError):
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
        super().__init__(
            f"{step}: {code}: " + "; ".join(self.messages),
            retryable=retryable,
            retry_after=bounded_wait(retry_after),
        )


class ApiError(OperationError):
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
        where = f"HTTP {status}" if status is not None else "no answer"
        text = f"{self.platform} {operation} failed: {where} {code}"
        if self.messages:
            text += ": " + "; ".join(self.messages)
        super().__init__(
            " ".join(text.split()), retryable=retryable, retry_after=bounded_wait(retry_after)
        )

    def failure(self, step: str) -> "StorefrontError":
        """This failure as the pipeline takes it: code `<PLATFORM>_<code>`, same retry."""
        return StorefrontError(
            step,
            f"{self.platform.upper()}_{self.code}",
            [str(self)],
            retryable=self.retryable,
            retry_after=self.retry_after,
        )


async def first_install_time_zone(
    service: ServiceContext, platform: str, domain: str, read: Callable[[], Awaitable[str]]
) -> str | None:
    """The time zone the merchant chose in their storefront's admin, read by `read` (one try of
    the platform's bounded client: the install waits at most that client's deadline and never
    fails because of it), for a shop installed for the first time; a reinstall keeps what the
    settings page holds. None, and a warning naming the shop and the error code (never the
    token), when the shop is not new, the storefront did not answer, or it names no time zone
    this machine knows: the shop then starts in UTC, changeable on the settings page."""
    if await service.store.shop_by_domain(platform, domain) is not None:
        return None
    try:
        zone = await read()
    except (ApiError, httpx2.HTTPError) as error:
        code = error.code if isinstance(error, ApiError) else type(error).__name__
        log.warning(f"{platform} time zone not read", extra={"shop": domain, "error": code})
        return None
    if time_zone_problem(zone):
        log.warning(
            f"{platform} time zone not known here", extra={"shop": domain, "time_zone": zone[:64]}
        )
        return None
    return zone


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


class OrderChanges(msgspec.Struct, frozen=True, kw_only=True):
    """What a storefront order's events ask of Klarna, as its adapter reads the order now: the
    refunds made on the storefront (each made at Klarna once, by its `refund_id`), whether the
    order was cancelled, and whether nothing more of it will ship (`closed`: completed, or closed
    with goods never shipped). The order's job does only what the ledger says is not done yet."""

    klarna_order_id: str
    refunds: list[RefundEvent] = []
    cancelled: bool = False
    closed: bool = False
    order_number: str | None = None


class OrderLife(msgspec.Struct, frozen=True, kw_only=True):
    """An order's life at Klarna after its captures, from the ledger, for a write-back: what was
    refunded (done refunds only), its state (`released`: its remaining authorization given back),
    and when its authorization runs out while goods may still ship (None: not known, or the order
    is no longer open)."""

    state: OrderState = "open"
    refunded_amount: int = 0
    refunds: list[OrderOperation] = []
    failed_refunds: list[OrderOperation] = []
    released: bool = False
    cancelled: bool = False
    authorization_expires_at: float | None = None
    extended: bool = False


async def order_life(store: Store, shop: Shop, order_id: str) -> OrderLife:
    """The order's refunds, cancellation, release and authorization, as the ledger holds them."""
    operations = await store.order_operations(shop.id, [order_id])
    order = await store.get_order(shop.id, order_id)
    refunds = [op for op in operations if op.kind == "refund" and op.state == "done"]
    done = {op.kind for op in operations if op.state == "done"}
    state: OrderState = order.state if order is not None else "open"
    return OrderLife(
        state=state,
        refunded_amount=sum(op.amount or 0 for op in refunds),
        refunds=refunds,
        failed_refunds=[op for op in operations if op.kind == "refund" and op.state == "failed"],
        released="release" in done,
        cancelled="cancel" in done,
        authorization_expires_at=(
            order.authorization_expires_at if order is not None and state == "open" else None
        ),
        extended="extend" in done,
    )


class PaymentCapture(msgspec.Struct, frozen=True, kw_only=True):
    """One capture the storefront's payments hold on an order: its id, amount (minor units of the
    order's presentment currency), status (PENDING, SUCCESS, FAILURE) and when it was made."""

    id: str
    amount: int
    status: str
    created_at: float


class PaymentState(msgspec.Struct, frozen=True, kw_only=True):
    """An order's payment as the storefront holds it, for a capture through the storefront: the
    authorization to capture from (None: there is none, the order was paid some other way or
    already taken in full), the presentment currency, what is left to capture, whether the
    authorization takes several captures, and the captures made so far (oldest first)."""

    authorization_id: str | None
    currency: str
    capturable: int
    multi_capturable: bool
    captures: list[PaymentCapture] = []
    # Money taken at checkout (a SALE) or captured outside this service before: the order is
    # the storefront's business, not ours.
    settled_at_checkout: bool = False
    # The authorization's payment id at the storefront (Shopify's `paymentId`): what Klarna's
    # payments app writes into the Klarna order's merchant references.
    payment_id: str | None = None


class StorefrontPayments(Protocol):
    """A storefront that captures Klarna's money itself (its checkout took the payment): the
    pipeline captures a shipment through it instead of at Klarna, and calls Klarna for nothing
    of such an order."""

    async def payment_state(self, shop: Shop, order_id: str) -> PaymentState:
        """The order's payment as the storefront holds it now."""
        ...

    async def capture_payment(
        self, shop: Shop, order_id: str, authorization_id: str, amount: int, currency: str
    ) -> PaymentCapture:
        """Capture `amount` of the authorization; the capture transaction the storefront made
        (PENDING while its gateway works). Raises StorefrontError, not retryable, with the
        storefront's words when it refuses."""
        ...

    async def capture_setting(self, shop: Shop) -> str:
        """What the storefront's recent orders say of the shop's payment capture setting, in
        the merchant's words (that it could not be checked, when it could not)."""
        ...


class Storefront(Protocol):
    """What the pipeline asks of a platform's adapter, Standard Webhooks included."""

    @property
    def reads_record(self) -> bool:
        """Whether `shipment` needs the fulfilment's capture record: an adapter whose webhook
        holds the whole shipment does not, and the run then spares the read."""
        ...

    @property
    def writes_back(self) -> bool:
        """Whether `write_back` puts anything on a storefront order: an outcome is then queued
        as a callback even for a shop without a status URL."""
        ...

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        """The shipment a fulfilment's deliveries describe. With a capture on record, only what
        can still change (tracking) needs to be right."""
        ...

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges | Skipped:
        """What the order's events (`deliveries`: its accepted order events, in arrival order,
        bodies kept) ask of Klarna: an adapter with an API reads the order's refunds and status
        there, as they stand now; one without reads them from the deliveries."""
        ...

    def payments(self, shop: Shop) -> StorefrontPayments | None:
        """The storefront's own capture of the shop's Klarna payments, when the shop takes Klarna
        through the storefront's checkout and chose to capture there; None: captured at Klarna."""
        ...

    async def write_back(self, shop: Shop, order_id: str) -> None:
        """Put the order's capture status, and its life after (`order_life`: refunds,
        cancellation, release, the authorization's expiry), on the storefront order, from the
        ledger as it now stands (so a retried or late write-back never goes backwards)."""
        ...


class StorefrontApp:
    """What every storefront app holds: the settings, the shops (for their sealed API
    credentials), the store (the ledger its write-back reads) and the HTTP client for its API."""

    reads_record = True
    writes_back = True

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

    def payments(self, shop: Shop) -> StorefrontPayments | None:
        return None


StorefrontFactory = Callable[..., Storefront]


@dataclass(frozen=True, kw_only=True)
class Platform:
    """One storefront platform, as the rest of the service sees it: everything that is not the
    platform's own business goes through this description, and `plugin.platforms.registry`
    lists them. A new platform is one package under `plugin/platforms/` and one registry line.

    - `name`: as shops, URLs (/webhooks/<name>...) and the CLI write it.
    - `label`: as the merchant's pages write it.
    - `routes`: its webhook receiver and, for marketplace apps, its install and admin entry.
    - `storefront`: the adapter the pipeline calls for the platform's shipments and write-backs
      (built with the settings, the shops, an HTTP client and a retry policy); every platform
      has one, Standard Webhooks too.
    - `merchant_hosted`: its API lives at an address the merchant enters, not one the operator
      sets, so its calls go through the address-guarded client.
    - `options`: the shop options (ShopOptions' fields) its settings page offers beyond the
      common ones.
    - `domain_format`: how its storefront domains are written; a domain not in it is no shop,
      answered without a lookup.
    - `shop_add`: its part of `klarna-capture shop add`; None where shops are not added there
      but made by installing the platform's app.
    - `shop_details`: what `klarna-capture shop show` adds about a shop of it (never a secret);
      None: its domain and whether the app is installed, where it has a domain.
    - `rehook`: what `klarna-capture shop rotate-secret` does beyond making the new secret, when
      the storefront holds it (printing what happened); its exit status.
    - `settings_page`: what its shops' settings page adds to the common fields (its fields and
      their checks, its partial, who may frame the page), from its `settings.py`.
    - `pages`: the paths of its own pages beyond the merchant's (its install and admin entries),
      which get the pages' security headers.
    - `delivery_event`: the shipment a stored delivery's body describes, decoded without a call
      (None: the body alone does not say), so a shipment that failed before it was planned
      still shows its order, Klarna order and amount; None where the platform's deliveries
      hold no whole shipment.
    """

    name: str
    label: str
    routes: Callable[[], Sequence[BaseRoute]]
    storefront: StorefrontFactory | None = None
    merchant_hosted: bool = False
    options: tuple[str, ...] = ()
    domain_format: Callable[[str], bool] | None = None
    shop_add: "ShopAdd | None" = None
    shop_details: Callable[[Shop], dict[str, Any]] | None = None
    rehook: "Callable[[ServiceContext, Shop], Awaitable[int]] | None" = None
    settings_page: SettingsPage = field(default_factory=SettingsPage)
    pages: tuple[str, ...] = ()
    delivery_event: Callable[[bytes], FulfillmentEvent | None] | None = None


class ShopAddRefused(PluginError):
    """A `shop add` that cannot go on: the one line the operator is told, and the exit status."""

    def __init__(self, message: str, *, status: int = 2) -> None:
        self.status = status
        super().__init__(message)


# How `shop add` reads a secret: (from standard input?, prompt, what it is, the option that
# reads it from standard input); raises ShopAddRefused when it can be read neither way.
ReadSecret = Callable[[bool, str, str, str], str]


@dataclass(frozen=True, kw_only=True)
class NewShop:
    """What a platform's `shop add` options say about the new shop: where it is (a domain that
    one shop at most may have), its options, and the addresses the merchant gave (by option),
    which must lead to the public internet."""

    domain: str | None = None
    options: ShopOptions | None = None
    addresses: tuple[tuple[str, str], ...] = ()


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


def _nothing_more(args: argparse.Namespace) -> NewShop:
    return NewShop()


@dataclass(frozen=True, kw_only=True)
class ShopAdd:
    """A platform's part of `klarna-capture shop add` (in `plugin/platforms/<name>/cli.py`).

    - `add_options`: adds its options to the parser; `options` lists them, and another
      platform's shop may not be given them.
    - `new_shop`: the shop its options describe, checked (raises ShopAddRefused).
    - `api_token`: the shop's API credentials (sealed when stored), made with the secrets it
      reads after the Klarna password; None: the platform has none.
    - `created`: what the operator does next on the storefront, said after the shop is made.
    - `time_zone`: the time zone the storefront names for the new shop, asked once (through
      the client for merchant-entered addresses) before it is made; None: it names none, and
      the shop starts in UTC. None here: the platform is not asked.
    """

    add_options: Callable[[argparse.ArgumentParser], None] = _no_options
    options: tuple[str, ...] = ()
    new_shop: Callable[[argparse.Namespace], NewShop] = _nothing_more
    api_token: Callable[[argparse.Namespace, ReadSecret], str] | None = None
    created: str | None = None
    time_zone: Callable[[httpx2.AsyncClient, NewShop], Awaitable[str | None]] | None = None
