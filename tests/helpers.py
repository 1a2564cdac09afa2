"""What the service tests share: a storefront that signs events, a status-URL inbox, waiting (for a
condition, or for the queue to be idle)."""

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.from_thread
import httpx2
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from plugin import signatures
from plugin.config import Settings
from plugin.klarna.models import OrderLine
from plugin.sandbox.klarna import DEFAULT_PASSWORD, DEFAULT_USERNAME, KlarnaSandbox
from plugin.service import Service, open_service
from plugin.store import ShopChanges, Store, open_store
from plugin.store.records import Shop, ShopOptions

# The tests' status URLs and storefront sandboxes listen on loopback, which merchant-entered
# URLs may reach only when the operator allows it: every test's settings include this.
ALLOW_LOOPBACK = {"KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128"}

# The Klarna sandbox's merchant credentials, as the tests' shops use them.
SANDBOX_USERNAME = DEFAULT_USERNAME
SANDBOX_PASSWORD = DEFAULT_PASSWORD

# A Klarna order line for 6000 EUR incl. 25 % VAT, as the sandbox orders in the tests use.
TOMATOES = OrderLine(
    name="Tomatoes",
    reference="SKU-1",
    quantity=10,
    unit_price=600,
    total_amount=6000,
    tax_rate=2500,
    total_tax_amount=1200,
)

# A storefront order as the Klarna order placed for it: 2 x 20.00 tomatoes (2.00 off) and
# 1 x 10.00 basil at 7 % VAT, 4.90 shipping at 19 %, tax included: 52.90 EUR in all.
STOREFRONT_ORDER_LINES = (
    OrderLine(
        name="Tomatoes", quantity=2, unit_price=2000, total_amount=3800,
        total_discount_amount=200, tax_rate=700, total_tax_amount=249,
    ),
    OrderLine(
        name="Basil", quantity=1, unit_price=1000, total_amount=1000,
        tax_rate=700, total_tax_amount=65,
    ),
    OrderLine(
        name="Standard", type="shipping_fee", quantity=1, unit_price=490,
        total_amount=490, tax_rate=1900, total_tax_amount=78,
    ),
)  # fmt: skip
STOREFRONT_ORDER_AMOUNT = 5290


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    env: dict[str, str], *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`klarna-capture ARGS` in a process of its own, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "plugin", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=60,
    )


def cli_shop(
    env: dict[str, str],
    *extra: str,
    name: str = "Test shop",
    environment: str = "playground",
    username: str = SANDBOX_USERNAME,
    password: str = SANDBOX_PASSWORD,
) -> dict[str, str]:
    """`klarna-capture shop add --json`: the new shop's id, webhook path and secret."""
    done = run_cli(
        env,
        "shop",
        "add",
        "--platform",
        "standard",
        "--name",
        name,
        "--klarna-region",
        "eu",
        "--klarna-environment",
        environment,
        "--klarna-username",
        username,
        "--klarna-password-stdin",
        "--json",
        *extra,
        stdin=password + "\n",
    )
    shop: dict[str, str] = msgspec.json.decode(done.stdout)
    return shop


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll until `predicate` holds; a bounded wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {what}".strip())
        time.sleep(0.02)


def wait_idle(settings: Settings, timeout: float = 30.0) -> None:
    """Wait until the service's queue is idle, as its store counts jobs: none queued (due now or
    later) or running. A test asserts that something did NOT happen after this, never after a
    sleep: a rerun still queued or on its way on a slow machine would pass a sleep unseen."""

    async def opened() -> Store:
        return open_store(settings.database.url)

    def idle(counts: Mapping[str, int]) -> bool:
        return counts.get("queued", 0) == 0 and counts.get("running", 0) == 0

    with anyio.from_thread.start_blocking_portal() as portal:
        store = portal.call(opened)
        try:
            wait_until(
                lambda: idle(portal.call(store.job_counts)), timeout, "for the queue to be idle"
            )
        finally:
            portal.call(store.close)


def create_shop(settings: Settings, **fields: Any) -> tuple[Shop, str]:
    async def create() -> tuple[Shop, str]:
        async with open_service(settings) as service:
            return await service.shops.create(
                platform="standard",
                name=fields.pop("name", "Test shop"),
                klarna_region="eu",
                klarna_environment="playground",
                klarna_username=fields.pop("klarna_username", SANDBOX_USERNAME),
                klarna_password=fields.pop("klarna_password", SANDBOX_PASSWORD),
                status_url=fields.pop("status_url", None),
                options=fields.pop("options", ShopOptions()),
            )

    return anyio.run(create)


def install_shop(
    settings: Settings,
    platform: str,
    shop_domain: str,
    token: str,
    *,
    changes: ShopChanges | None = None,
    klarna: bool = True,
    then: Callable[[Service, Shop], Awaitable[None]] | None = None,
) -> Shop:
    """A storefront app's shop as its install leaves it (`token` from the storefront's OAuth),
    then `changes` saved, with the Klarna sandbox's credentials when `klarna`; `then` runs on the
    service before it closes (a hook subscription, say)."""

    async def install() -> Shop:
        async with open_service(settings) as service:
            shop = await service.shops.install(
                platform=platform, shop_domain=shop_domain, token=token
            )
            saved = changes or ShopChanges()
            if klarna:
                saved = msgspec.structs.replace(saved, klarna_username=SANDBOX_USERNAME)
            changed = await service.shops.update(
                shop.id, saved, klarna_password=SANDBOX_PASSWORD if klarna else None
            )
            assert changed is not None
            if then is not None:
                await then(service, changed)
            return changed

    return anyio.run(install)


def shipment(
    klarna_order_id: str,
    fulfillment_id: str = "1001-F1",
    *,
    lines: list[dict[str, Any]] | None = None,
    shipping: list[dict[str, Any]] | None = None,
    complete: bool = False,
    event_type: str = "fulfillment.created",
    currency: str = "EUR",
) -> dict[str, Any]:
    """An event in the public schema (docs/storefronts/standard-webhooks.md)."""
    return {
        "type": event_type,
        "timestamp": "2026-11-27T10:00:00Z",
        "data": {
            "order_id": fulfillment_id.split("-")[0],
            "fulfillment_id": fulfillment_id,
            "klarna_order_id": klarna_order_id,
            "currency": currency,
            "complete": complete,
            "lines": lines
            if lines is not None
            else [
                {
                    "reference": "SKU-1",
                    "name": "Tomatoes",
                    "quantity": 10,
                    "unit_price": 600,
                    "tax_rate": 2500,
                    "total_discount_amount": 0,
                    "type": "physical",
                }
            ],
            "shipping": shipping or [],
        },
    }


def refund(
    klarna_order_id: str,
    refund_id: str = "R1",
    *,
    amount: int,
    order_id: str = "1001",
    lines: list[tuple[str, int]] | None = None,
    fulfillment_id: str | None = None,
    currency: str = "EUR",
    description: str | None = None,
) -> dict[str, Any]:
    """A `refund.created` event in the public schema; `lines` as (reference, quantity)."""
    data: dict[str, Any] = {
        "order_id": order_id,
        "refund_id": refund_id,
        "klarna_order_id": klarna_order_id,
        "currency": currency,
        "amount": amount,
    }
    if lines is not None:
        data["lines"] = [
            {"reference": reference, "name": reference, "quantity": quantity, "unit_price": 0}
            for reference, quantity in lines
        ]
    if fulfillment_id is not None:
        data["fulfillment_id"] = fulfillment_id
    if description is not None:
        data["description"] = description
    return {"type": "refund.created", "timestamp": "2026-11-28T10:00:00Z", "data": data}


def order_event(event_type: str, klarna_order_id: str, order_id: str = "1001") -> dict[str, Any]:
    """An `order.cancelled` or `order.closed` event in the public schema."""
    return {
        "type": event_type,
        "timestamp": "2026-11-28T10:00:00Z",
        "data": {"order_id": order_id, "klarna_order_id": klarna_order_id},
    }


class Storefront:
    """Sends signed deliveries to the service, as a Standard Webhooks storefront does."""

    def __init__(self, base_url: str, shop_id: str, secret: str) -> None:
        self.url = f"{base_url}/webhooks/standard/{shop_id}"
        self.key = signatures.parse_secret(secret)

    def signed(
        self,
        body: bytes,
        *,
        delivery_id: str | None = None,
        timestamp: int | None = None,
        key: bytes | None = None,
    ) -> dict[str, str]:
        delivery_id = delivery_id or f"msg_{uuid.uuid4().hex}"
        timestamp = int(time.time()) if timestamp is None else timestamp
        return {
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.sign(key or self.key, delivery_id, timestamp, body),
        }

    def send(self, event: dict[str, Any] | bytes, **options: Any) -> httpx2.Response:
        body = event if isinstance(event, bytes) else msgspec.json.encode(event)
        return httpx2.post(self.url, content=body, headers=self.signed(body, **options), timeout=30)


class StatusInbox:
    """A shop's status URL: keeps every event posted to it."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.app = Starlette(routes=[Route("/status", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    def events(self, secret: str | None = None) -> list[dict[str, Any]]:
        """Events received, each verified against `secret` when given."""
        out = []
        for headers, body in self.received:
            if secret is not None:
                signatures.verify([signatures.parse_secret(secret)], headers, body)
            out.append(msgspec.json.decode(body))
        return out


class Server:
    """`klarna-capture serve` in a process of its own, ready when its /readyz answers."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "plugin", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            try:
                return httpx2.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx2.TransportError:
                assert self.process.poll() is None, "serve exited"
                return False

        wait_until(ready, timeout=30, what="for serve to start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


# A Klarna order id as Klarna makes them (a UUID), for events mapped without the sandbox.
KLARNA_ORDER_ID = "f3392f8b-6116-4073-ab96-e330819e2c07"


def capture_keys(sandbox: KlarnaSandbox, order_id: str) -> set[str | None]:
    """The idempotency keys of every capture POST the Klarna sandbox received for an order. One
    shipment captured exactly once sends one key, however often it was sent: two keys mean it
    was planned twice, and a partial shipment could have been captured twice."""
    path = f"/ordermanagement/v1/orders/{order_id}/captures"
    return {r.idempotency_key for r in sandbox.requests if r.method == "POST" and r.path == path}
