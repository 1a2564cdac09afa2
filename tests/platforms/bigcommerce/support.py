"""What the BigCommerce service tests share: the store they install the app on, an order placed
with Klarna, the webhooks sent to the service, and what the write-back left on the order."""

import json
from typing import Any

import httpx2

from plugin.config import Settings
from plugin.platforms.bigcommerce import install as bigcommerce_web
from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
    Fee,
    Product,
    signed_webhook,
    webhook_body,
)
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.service import Service
from plugin.store import ShopChanges
from plugin.store.records import Shop, ShopOptions
from tests.helpers import STOREFRONT_ORDER_AMOUNT, STOREFRONT_ORDER_LINES, install_shop

STORE = "g5cd38"
MERCHANT_NOTE = "Leave at the back door"
CREATED = "store/shipment/created"
UPDATED = "store/shipment/updated"


def install(
    settings: Settings,
    sandbox: BigCommerceSandbox,
    *,
    klarna: bool = True,
    region: str = "eu",
    options: ShopOptions | None = None,
    hooks: bool = False,
) -> Shop:
    """The app installed on STORE (as the auth callback leaves it), Klarna set up; with `hooks`,
    its hooks subscribed too, each with the store's hook header."""
    token = sandbox.add_store(STORE)

    async def subscribe(service: Service, shop: Shop) -> None:
        await bigcommerce_web.subscribe(service, shop, token)

    changes = ShopChanges(options=options or ShopOptions(), klarna_region=region)
    return install_shop(
        settings,
        "bigcommerce",
        STORE,
        token,
        changes=changes,
        klarna=klarna,
        then=subscribe if hooks else None,
    )


def place_order(
    bigcommerce: BigCommerceSandbox,
    klarna: KlarnaSandbox,
    *,
    klarna_id: str | None = "placed",
    **options: Any,
) -> tuple[int, str]:
    """A tax-included EUR order of 2 x 20.00 tomatoes (2.00 off) and 1 x 10.00 basil, 4.90
    shipping: 52.90 in all, paid with Klarna. Returns (BigCommerce order id, Klarna order id)."""
    placed = klarna.create_order(
        order_amount=STOREFRONT_ORDER_AMOUNT, order_lines=list(STOREFRONT_ORDER_LINES)
    )
    kept = placed.order_id if klarna_id == "placed" else klarna_id
    order_id = bigcommerce.add_order(
        STORE,
        [
            Product("Tomatoes", "20.00", quantity=2, sku="TOM", tax_rate="0.07", discount="2.00"),
            Product("Basil", "10.00", sku="BAS", tax_rate="0.07"),
        ],
        shipping=Fee("4.90", "0.19"),
        metafields={("klarna", "order_id"): kept} if kept else None,
        staff_notes=MERCHANT_NOTE,
        **options,
    )
    return order_id, placed.order_id


def send(
    url: str,
    scope: str,
    order_id: int,
    shipment_id: int,
    *,
    webhook_id: str | None = None,
    secret: str = DEFAULT_CLIENT_SECRET,
    timestamp: int | None = None,
) -> httpx2.Response:
    body = webhook_body(STORE, scope, order_id, shipment_id)
    return deliver(
        url, body, signed_webhook(secret, body, webhook_id=webhook_id, timestamp=timestamp)
    )


def deliver(url: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    """A delivery as the fake BigCommerce made it (`BigCommerceSandbox.delivery`), sent."""
    return httpx2.post(f"{url}/webhooks/bigcommerce", content=body, headers=headers, timeout=10)


def status(bigcommerce: BigCommerceSandbox, order_id: int) -> dict[str, Any] | None:
    field = bigcommerce.metafields(STORE, order_id).get(("klarna_capture", "status"))
    if field is None:
        return None
    value: dict[str, Any] = json.loads(field["value"])
    return value


def status_is(bigcommerce: BigCommerceSandbox, order_id: int, wanted: str) -> bool:
    found = status(bigcommerce, order_id)
    return found is not None and found["status"] == wanted


def our_notes(bigcommerce: BigCommerceSandbox, order_id: int) -> list[str]:
    lines = bigcommerce.staff_notes(STORE, order_id).splitlines()
    assert lines[0] == MERCHANT_NOTE  # the merchant's own notes stay first, untouched
    return lines[1:]
