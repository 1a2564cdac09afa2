"""What the store holds, as typed records; secrets stay encrypted blobs until the vault opens."""

from typing import Annotated, Literal

import msgspec

from plugin.klarna.models import Environment, Region

# A fulfilment's job captures it; an order's job (key: the storefront order id) carries out what
# its order events ask of Klarna (refunds, cancellation, release, extension); a callback's job
# reports an outcome.
JobKind = Literal["fulfillment", "callback", "order"]
JOB_KINDS: tuple[JobKind, ...] = ("fulfillment", "callback", "order")
JobState = Literal["queued", "running", "done", "dead", "waiting"]
# What a waiting job waits on: the shop's Klarna credentials (missing, or refused by Klarna). A
# waiting job is neither queued nor dead: it is not claimed and burns no attempt, until the shop's
# credentials are saved and every job waiting on them is released at once.
Wait = Literal["klarna_credentials"]
KLARNA_CREDENTIALS: Wait = "klarna_credentials"
CaptureState = Literal["planned", "captured"]
OperationKind = Literal["shipping_info", "send_out"]
# A storefront order at Klarna: open while goods may still ship; cancelled (nothing captured, the
# order cancelled) or closed (the remaining authorization released: nothing more ships).
OrderState = Literal["open", "cancelled", "closed"]
# The life-cycle calls made on a Klarna order, each under its key (OrderOperation).
OrderOperationKind = Literal["refund", "cancel", "release", "extend", "merchant_references"]
OrderOperationState = Literal["planned", "done", "failed"]
# The audit trail's `fulfillment_id` column names what an entry is about: a shipment (its
# fulfilment id), or an order's life after its captures (this prefix and the order id).
ORDER_SUBJECT_PREFIX = "order:"


def order_subject(order_id: str) -> str:
    """What the audit trail files an order's life-cycle entries under (`audit_trail(shop,
    order_subject(order_id))` reads them): the one place that spells it."""
    return ORDER_SUBJECT_PREFIX + order_id


# The gateway names Shopify gives Klarna's payments: Klarna's payments app, Shopify Payments.
DEFAULT_PAYMENT_GATEWAYS = ("klarna", "shopify_payments")


class ShopOptions(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a merchant chooses; defaults are the safe choice."""

    capture_mode: Literal["each", "complete"] = "each"
    send_tracking: bool = True
    trigger_send_out: bool = False
    description_template: str | None = None
    # Storefront apps (Shopify): where the shop keeps the Klarna order id on its orders
    # ("metafield": namespace.key, "note_attribute": its name, "transaction": the gateway's name)
    # and the Klarna shipping method its tracking entries get.
    klarna_order_id_source: Literal["metafield", "note_attribute", "transaction"] = "metafield"
    klarna_order_id_field: str = "klarna.order_id"
    shipping_method: str | None = None
    # Shopify: who captures. "klarna": this service at Klarna's OM API (the Klarna order lives
    # outside Shopify's checkout); "shopify": Shopify's orderCapture, for shops that take Klarna
    # through Shopify's checkout (Klarna's payments app, Shopify Payments). Its authorizations
    # come from `payment_gateways` (lower case); one that cannot be captured in parts is
    # captured whole at the order's first or last fulfilment (`single_capture`).
    payment_flow: Literal["klarna", "shopify"] = "klarna"
    payment_gateways: tuple[str, ...] = DEFAULT_PAYMENT_GATEWAYS
    single_capture: Literal["first", "last"] = "last"
    # WooCommerce: the order statuses that mean "shipped, capture it" (a custom one such as
    # "shipped" included), without the "wc-" prefix.
    capture_statuses: list[str] = msgspec.field(default_factory=lambda: ["completed"])
    # The order's life at Klarna: a cancelled or completed order with an uncaptured remainder has
    # it released; an order with unshipped goods whose authorization expires within
    # `keep_alive_days` days has it extended (once a day at most, while Klarna allows).
    release_remaining: bool = True
    keep_alive: bool = True
    keep_alive_days: Annotated[int, msgspec.Meta(ge=1, le=30)] = 3
    # A mail to the shop's address when shipments or orders need attention (dead letters, refused
    # refunds), at most one an hour (plugin/pipeline/alerts.py): asked for, never assumed.
    failure_alerts: bool = False
    # The IANA time zone the merchant's pages show times in (checked against zoneinfo when set).
    time_zone: Annotated[str, msgspec.Meta(max_length=64)] = "UTC"
    # The Babel locale the pages format amounts with (checked with babel.Locale.parse when set).
    locale: Annotated[str, msgspec.Meta(max_length=32)] = "en"


class Shop(msgspec.Struct, kw_only=True):
    id: str
    platform: str
    name: str
    klarna_region: Region
    klarna_environment: Environment
    klarna_username: str
    klarna_password: bytes
    status_url: str | None
    options: ShopOptions
    enabled: bool
    created_at: float
    updated_at: float
    klarna_password_set_at: float | None = None
    # A storefront app's shop: its domain there and its sealed API token (None once uninstalled).
    shop_domain: str | None = None
    platform_token: bytes | None = None
    # Where the merchant receives sign-in links and failure alerts (plugin/emails.py's normal
    # form); None: nowhere.
    email: str | None = None

    @property
    def klarna_configured(self) -> bool:
        return bool(self.klarna_username)

    def __repr__(self) -> str:
        return f"Shop(id={self.id!r}, platform={self.platform!r}, name={self.name!r})"


class WebhookSecret(msgspec.Struct, kw_only=True):
    id: int
    shop_id: str
    secret: bytes
    created_at: float
    expires_at: float | None

    def __repr__(self) -> str:
        return f"WebhookSecret(id={self.id!r}, shop_id={self.shop_id!r})"


class Delivery(msgspec.Struct, kw_only=True):
    id: int
    shop_id: str
    delivery_id: str
    event_type: str | None
    fulfillment_id: str | None
    body: bytes
    status: Literal["accepted", "rejected"]
    reason: str | None
    received_at: float
    order_id: str | None = None
    # When retention emptied its body (customers' data), which the shipment no longer needed.
    pruned_at: float | None = None


class Job(msgspec.Struct, kw_only=True):
    id: int
    shop_id: str
    kind: JobKind
    key: str
    state: JobState
    attempts: int
    due_at: float
    lease_owner: str | None
    lease_until: float | None
    rerun: bool
    last_error: str | None
    created_at: float
    updated_at: float


class CaptureRecord(msgspec.Struct, kw_only=True):
    """The ledger: one row per (shop, storefront fulfilment), so a fulfilment is captured once."""

    shop_id: str
    fulfillment_id: str
    order_id: str
    klarna_order_id: str
    currency: str
    state: CaptureState
    idempotency_key: str | None
    planned_at: float | None
    request: bytes | None
    captured_amount: int | None
    capture_id: str | None
    klarna_reference: str | None
    captured_at: float | None
    shipping_info: str  # JSON: the shipping_info entries Klarna has for this capture
    send_out_done: bool
    error: str | None
    created_at: float
    updated_at: float
    completes_order: bool = False
    # When the Klarna order's authorization runs out (its `expires_at`), as read when planning.
    authorization_expires_at: float | None = None
    order_number: str | None = None  # the storefront's order number, as planning read it
    order_amount: int | None = None  # the Klarna order's `order_amount`, as planning read it


class Operation(msgspec.Struct, kw_only=True):
    """A side effect after the capture, its idempotency key stored before it is sent."""

    id: int
    shop_id: str
    fulfillment_id: str
    kind: OperationKind
    idempotency_key: str
    body: bytes
    state: Literal["planned", "done"]
    created_at: float
    done_at: float | None


class OrderRecord(msgspec.Struct, kw_only=True):
    """A storefront order as the service knows it at Klarna: one row per (shop, order), noted
    when a shipment of it is planned or one of its order events runs."""

    shop_id: str
    order_id: str
    klarna_order_id: str
    currency: str
    state: OrderState
    # When the Klarna authorization runs out (its `expires_at`; None: not read yet), and when the
    # keep-alive last read the order at Klarna.
    authorization_expires_at: float | None
    checked_at: float | None
    created_at: float
    updated_at: float


class OrderOperation(msgspec.Struct, kw_only=True):
    """One life-cycle call on a Klarna order, planned with its idempotency key and request before
    it is sent, under a key that makes it happen once: a refund under the storefront's refund id;
    a cancellation, a release or the merchant references under the order id; an extension under
    the order id and the day (so at most one a day)."""

    shop_id: str
    kind: OrderOperationKind
    key: str
    order_id: str
    klarna_order_id: str
    currency: str
    state: OrderOperationState
    idempotency_key: str
    request: bytes  # the JSON body sent (b"" for calls without one)
    amount: int | None  # refunded or released, in minor units
    result: str | None  # Klarna's refund id; an extension's new expiry (ISO 8601)
    error: str | None  # JSON: the failure of a refused call
    planned_at: float
    done_at: float | None
    updated_at: float


class Callback(msgspec.Struct, kw_only=True):
    """An outcome to post to the shop's status URL; `webhook_id` is stable across retries."""

    id: int
    shop_id: str
    event_type: str
    webhook_id: str
    payload: bytes
    created_at: float
    sent_at: float | None


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    shop_id: str
    fulfillment_id: str | None
    job_id: int | None
    at: float
    step: str
    outcome: str
    detail: str


class Shipment(msgspec.Struct, kw_only=True):
    """One fulfilment as the activity view shows it: its job and, once planned, its capture."""

    job_id: int
    fulfillment_id: str
    job_state: JobState
    attempts: int
    last_error: str | None
    received_at: float
    updated_at: float
    capture_state: CaptureState | None = None
    order_id: str | None = None
    klarna_order_id: str | None = None
    currency: str | None = None
    planned_request: bytes | None = None
    captured_amount: int | None = None
    capture_id: str | None = None
    klarna_reference: str | None = None
    shipping_info: str | None = None
    send_out_done: bool = False
    captured_at: float | None = None
    order_number: str | None = None  # the storefront's, when planned
    order_amount: int | None = None  # the Klarna order's amount when planned


# What the activity view filters a shop's shipments by: failed for good (a dead letter), its job
# not done (waiting on credentials, queued, retrying or running), captured, or of an order with a
# refund Klarna made.
ShipmentFilter = Literal["attention", "waiting", "captured", "refunded"]
SHIPMENT_FILTERS: tuple[ShipmentFilter, ...] = ("attention", "waiting", "captured", "refunded")


class FoundShipments(msgspec.Struct, frozen=True, kw_only=True):
    """The shipments a filtered look through a shop's recent ones found, newest first, and,
    when it stopped at its bound before the shop's oldest shipment, the (updated_at, job_id) of
    the last one it looked at: where the next look goes on."""

    shipments: list[Shipment]
    scanned_to: tuple[float, int] | None = None


class CaptureDay(msgspec.Struct, frozen=True, kw_only=True):
    """A shop's captures of one currency made on one day of the shop's calendar: how many, and
    their sum in minor units."""

    day: int  # days since 1970-01-01 on the shop's calendar
    currency: str
    count: int
    amount: int


# The store sums captures by quarter hour: every time zone's offset from UTC is a whole number of
# quarter hours, so they add up to the days of any zone, its changes of offset included.
QUARTER_HOUR = 900


class CaptureQuarter(msgspec.Struct, frozen=True, kw_only=True):
    """A shop's captures of one currency made in one quarter hour: how many, and their sum in
    minor units."""

    quarter: int  # whole quarter hours since 1970-01-01 00:00 UTC
    currency: str
    count: int
    amount: int


class ShipmentCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A shop's shipments by where their job stands: waiting on something (the credentials),
    queued (new, or failed and retrying), running, and dead (failed for good); and beside them
    the shop's other dead letters, its orders' jobs and its status reports (callbacks), so that
    what needs attention is counted as Retry all retries it: every kind."""

    waiting: int = 0
    queued: int = 0
    running: int = 0
    dead: int = 0
    dead_orders: int = 0
    dead_callbacks: int = 0


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """A shop's shipments waiting on something: how many, since when (the oldest wait), and the
    earliest expiry of their Klarna authorizations, when read (None: not known)."""

    count: int
    since: float | None = None
    expires_at: float | None = None


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """Something of a shop that needs the merchant's attention, as a failure alert lists it: a
    shipment or an order whose job died (a dead letter), or an order's refused call."""

    subject: Literal["shipment", "order"]
    id: str  # the fulfilment id, or the storefront order id
    what: str  # "dead letter", or the refused call's kind ("refund", ...)
    error: str | None  # stored as the job or call keeps it (JSON)
    at: float


class ComplianceRequest(msgspec.Struct, kw_only=True):
    """A storefront's privacy request (data request, customer or shop redaction) and the report of
    what was found or removed: kept for the operator, without the customer's contact details."""

    id: int
    platform: str
    shop_domain: str
    topic: str
    webhook_id: str
    report: str  # JSON
    received_at: float


class SealedSecret(msgspec.Struct, kw_only=True, frozen=True):
    """A stored secret, sealed by the vault, and where it lives (for key rotation)."""

    table: Literal["shops", "webhook_secrets"]
    row_id: str
    shop_id: str
    field: Literal["klarna_password", "platform_token", "webhook_secret"]
    blob: bytes


class WorkerRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A process that claims jobs, as it registered itself: `owner` is what its jobs' leases name.
    It counts as alive until `alive_until` (its last heartbeat and a few missed beats; 0 once
    found dead); after that its running jobs are anyone's to claim. `pid_scope` says which
    processes can check its `pid`: those of the same machine, boot and pid namespace."""

    owner: str
    host: str
    pid: int
    pid_scope: str
    started_at: float
    heartbeat_at: float
    alive_until: float


class NewDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A verified delivery to store: `rejected` says why a verified body is no event (stored, no
    job); an accepted one with a `fulfillment_id` queues that fulfilment's job; an accepted
    `order_event` (a refund, a cancellation, a closed order: no `fulfillment_id`) queues the job
    of its `order_id`."""

    shop_id: str
    delivery_id: str
    body: bytes
    event_type: str | None
    fulfillment_id: str | None
    rejected: str | None
    received_at: float
    order_id: str | None = None
    order_event: bool = False
