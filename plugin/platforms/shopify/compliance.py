"""Shopify's mandatory privacy webhooks, acted on at once and recorded with a report.

- `customers/data_request`: report what is held about the customer's orders (deliveries, the
  personal fields in them, captures); the merchant answers the customer from it.
- `customers/redact`: replace the personal fields (address, contact details, line properties) in
  the stored deliveries and audit trail of those orders; amounts and ids stay, the ledger stays.
- `shop/redact`: delete everything of the shop, provided it is still uninstalled (a replayed
  request must not wipe a shop that installed the app again).

The shop is the one the signed body names, not the unsigned header. Each action is idempotent,
so a redelivered request repeats harmlessly; the report is kept once per webhook id, holding the
customer's id but not their email or phone.
"""

import time

import msgspec

from plugin.platforms.shopify import NAME, payloads
from plugin.store import Store

Report = dict[str, object]


async def handle(store: Store, topic: str, webhook_id: str, body: bytes) -> Report:
    """Act on a verified privacy request; raises msgspec errors for a body that is not one."""
    request = payloads.decode_compliance(body)
    domain = request.shop_domain
    shop = await store.shop_by_domain(NAME, domain)
    customer_id = request.customer.id if request.customer else None
    report: Report = {"shop_known": shop is not None}
    if topic == payloads.DATA_REQUEST_TOPIC:
        orders = [str(order) for order in request.orders_requested]
        report["customer_id"] = customer_id
        report["orders"] = await _held(store, shop.id, orders) if shop and orders else []
    elif topic == payloads.CUSTOMER_REDACT_TOPIC:
        orders = [str(order) for order in request.orders_to_redact]
        report["customer_id"] = customer_id
        report["orders"] = orders
        deliveries, entries = (0, 0)
        if shop is not None and orders:
            deliveries, entries = await store.redact_orders(
                shop.id, orders, redact_json, _redact_text
            )
        report["deliveries_redacted"] = deliveries
        report["audit_entries_redacted"] = entries
    elif topic == payloads.SHOP_REDACT_TOPIC:
        installed = shop is not None and shop.enabled and shop.platform_token is not None
        report["deleted"] = bool(shop is not None and not installed)
        if shop is not None and not installed:
            await store.remove_shop(shop.id)
        elif installed:
            report["kept_because"] = "the app is installed on this shop again"
    else:
        raise ValueError(f"{topic!r} is not a privacy topic")
    await store.record_compliance(
        NAME,
        domain,
        topic,
        webhook_id,
        msgspec.json.encode(report).decode(),
        time.time(),
    )
    return report


def _redact_text(detail: str) -> str:
    return redact_json(detail.encode()).decode()


async def _held(store: Store, shop_id: str, orders: list[str]) -> list[Report]:
    deliveries = await store.order_deliveries(shop_id, orders)
    captures = await store.order_captures(shop_id, orders)
    held: list[Report] = []
    for order_id in orders:
        bodies = [d for d in deliveries if d.order_id == order_id]
        fields = sorted({path for d in bodies for path in personal_fields(d.body)})
        held.append(
            {
                "order_id": order_id,
                "deliveries": len(bodies),
                "personal_fields": fields,
                "captures": [
                    {
                        "fulfillment_id": c.fulfillment_id,
                        "klarna_order_id": c.klarna_order_id,
                        "capture_id": c.capture_id,
                        "captured_amount": c.captured_amount,
                        "currency": c.currency,
                        "klarna_reference": c.klarna_reference,
                    }
                    for c in captures
                    if c.order_id == order_id
                ],
            }
        )
    return held


# --- redaction: what in a stored body is personal -------------------------------------------------

# What identifies or locates a person in a stored fulfilment body: the shipping address and
# contact details, the customer, and line item properties (engraving text and the like).
PERSONAL_KEYS = frozenset(
    {
        "destination",
        "email",
        "phone",
        "customer",
        "billing_address",
        "shipping_address",
        "contact_email",
        "properties",
        "note",
        "note_attributes",
        "browser_ip",
        "client_details",
    }
)
REDACTED = "[redacted]"


def redact(value: object) -> object:
    """`value` (decoded JSON) with every personal field's value replaced; amounts, ids, lines
    and tracking stay."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if key in PERSONAL_KEYS and item is not None else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def redact_json(raw: bytes) -> bytes:
    """A stored body or audit detail with the personal fields redacted (unchanged if not JSON)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw
    redacted = redact(decoded)
    return raw if redacted == decoded else msgspec.json.encode(redacted)


def personal_fields(raw: bytes) -> list[str]:
    """The paths of personal fields a stored body holds (for a data request's report)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return []
    found: list[str] = []

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if key in PERSONAL_KEYS and item not in (None, REDACTED):
                    found.append(where)
                else:
                    walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    walk(decoded, "")
    return sorted(set(found))
