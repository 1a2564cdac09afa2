"""What the demos share, so that none imports another: the sandbox's Klarna credentials and the
demo's key, the orders the demos place at Klarna, the processes they run and wait for, a signed
Standard Webhooks delivery, the Shopify app's install with its settings saved, and the
`klarna-capture` commands and waits a seeded demo makes."""

import contextlib
import html
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

import httpx2
import msgspec
from support import klarna_capture

from plugin import signatures
from plugin.sandbox.shopify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    query_hmac,
    session_token,
)

KLARNA_USER = "PK_SANDBOX"
KLARNA_PASSWORD = "sandbox-secret"  # noqa: S105 - the sandbox's published default
DEMO_SECRET_KEY = "demo-secret-key-0123456789abcdef"  # noqa: S105 - a throwaway demo key
SHOPIFY_DOMAIN = "demo-tomatoes.myshopify.com"
SEED_WAIT_SECONDS = 60.0

# Two lines that follow Klarna's rules: total = quantity * unit_price - discount, and the tax is
# within +-1 of total - total * 10000 / (10000 + tax_rate).
ORDER_LINES: list[dict[str, Any]] = [
    {
        "reference": "SKU-1",
        "name": "Tomatoes",
        "type": "physical",
        "quantity": 10,
        "unit_price": 600,
        "total_discount_amount": 0,
        "total_amount": 6000,
        "tax_rate": 2500,
        "total_tax_amount": 1200,  # 6000 - 6000 * 10000 / 12500 = 1200
    },
    {
        "reference": "SKU-2",
        "name": "Basil",
        "type": "physical",
        "quantity": 2,
        "unit_price": 350,
        "total_discount_amount": 100,
        "total_amount": 600,
        "tax_rate": 700,
        "total_tax_amount": 39,  # 600 - 600 * 10000 / 10700 = 39.25
    },
]
# What a shipment line carries: the service computes totals and tax itself.
SHIPMENT_KEYS = (
    "reference",
    "name",
    "type",
    "quantity",
    "unit_price",
    "tax_rate",
    "total_discount_amount",
)

# The Klarna order of a Shopify or BigCommerce shopper: 2 x 20.00 tomatoes less 2.00, 10.00 basil,
# 4.90 shipping (52.90 EUR).
KLARNA_LINES = [
    {"name": "Tomatoes", "quantity": 2, "unit_price": 2000, "total_discount_amount": 200,
     "total_amount": 3800, "tax_rate": 700, "total_tax_amount": 249},
    {"name": "Basil", "quantity": 1, "unit_price": 1000, "total_amount": 1000,
     "tax_rate": 700, "total_tax_amount": 65},
    {"name": "Standard", "type": "shipping_fee", "quantity": 1, "unit_price": 490,
     "total_amount": 490, "tax_rate": 1900, "total_tax_amount": 78},
]  # fmt: skip
KLARNA_LINES_AMOUNT = 5290


# --- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(
    name: str, command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` with its output in `log`; stop it (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            command, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"stopped {name}")


def wait_for(
    process: subprocess.Popen[bytes], url: str, what: str, log: Path, timeout: float = 30.0
) -> None:
    """Until `url` answers at all; fails early if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            if process.poll() is not None:
                fail(f"{what} exited with status {process.returncode}", log)
            if time.monotonic() > deadline:
                fail(f"{what} did not start within {timeout:g} s", log)
            time.sleep(0.1)


def fail(message: str, log: Path | None = None) -> NoReturn:
    if log is not None and log.exists():
        tail = log.read_text(errors="replace").splitlines()[-20:]
        message += f"\n--- last lines of {log.name} ---\n" + "\n".join(tail)
    raise SystemExit(f"demo: {message}")


def show(title: str, value: object) -> None:
    print(f"\n{title}:")
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


# --- a storefront's side --------------------------------------------------------------------------


def send(service_url: str, shop: dict[str, Any], event: dict[str, Any], log: Path) -> None:
    """One signed Standard Webhooks delivery of `event`, as a storefront sends it."""
    body = msgspec.json.encode(event)
    delivery_id, timestamp = f"msg_demo_{time.time_ns()}", int(time.time())
    key = signatures.parse_secret(shop["webhook_secret"])
    answer = httpx2.post(
        f"{service_url}{shop['webhook_path']}",
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.sign(key, delivery_id, timestamp, body),
        },
        timeout=30,
    )
    # One print, so that it stays whole among what seeds run meanwhile print.
    print(
        f"\n{event['type']} delivery {delivery_id} ({len(body)} bytes) answered HTTP "
        f"{answer.status_code}:\n  {answer.text}"
    )
    if answer.status_code != 200:
        fail("the service did not accept the delivery", log)


def set_up(service_url: str, log: Path, domain: str = SHOPIFY_DOMAIN) -> str:
    """Install the Shopify app on `domain` through OAuth and save its embedded settings page with
    the sandbox's Klarna credentials, as the merchant does: the settings page's URL."""
    browser = httpx2.Client(timeout=30, follow_redirects=False)

    # 1. The merchant installs the app: Shopify's signed install link, consent, the callback.
    params = {"shop": domain, "timestamp": str(int(time.time()))}
    url = f"{service_url}/auth/shopify/install?" + urlencode(
        {**params, "hmac": query_hmac(DEFAULT_CLIENT_SECRET, params)}
    )
    print("\ninstall:")
    for _ in range(3):  # install -> Shopify's consent page -> our callback -> the admin
        answer = browser.get(url)
        print(f"  GET {url.split('?')[0]} -> HTTP {answer.status_code}")
        if answer.status_code not in (302, 303):
            fail(f"the install stopped: {answer.text[:300]}", log)
        url = answer.headers["location"]
    print(f"  installed; Shopify now opens the app in its admin ({url.split('?')[0]})")

    # 2. The merchant opens the embedded settings page and enters the Klarna credentials.
    token = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, domain)
    entry = browser.get(f"{service_url}/shopify", params={"shop": domain, "id_token": token})
    if entry.status_code != 303:
        fail(f"the embedded entry answered HTTP {entry.status_code}: {entry.text[:300]}", log)
    settings_url = service_url + entry.headers["location"]
    page = browser.get(settings_url)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if page.status_code != 200 or found is None:
        fail(f"the settings page answered HTTP {page.status_code}", log)
    form = {
        "csrf_token": html.unescape(found.group(1)),
        "klarna_region": "eu",
        "klarna_environment": "playground",
        "klarna_username": KLARNA_USER,
        "klarna_password": KLARNA_PASSWORD,
        "capture_mode": "each",
        "send_tracking": "on",
        "description_template": "Shipment {fulfillment_name}",
        "klarna_order_id_source": "metafield",
        "klarna_order_id_field": "klarna.order_id",
        "shipping_method": "Home",
        "release_remaining": "on",
        "keep_alive": "on",
        "keep_alive_days": "3",
        "time_zone": "Europe/Berlin",
        "email": "",  # no sign-in mail: the shop opens its pages from the Shopify admin
    }
    saved = browser.post(settings_url, data=form, headers={"Origin": service_url})
    if saved.status_code not in (200, 303):
        fail(f"saving the settings answered HTTP {saved.status_code}", log)
    print(f"\nsettings saved on {settings_url.removeprefix(service_url)}")
    return settings_url


# --- the service's and Klarna's side, as a seeded demo reads them ---------------------------------


def cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    """One `klarna-capture` command against the demo's data dir: its standard output."""
    done = subprocess.run(  # noqa: S603 - our own command
        [klarna_capture(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        fail(f"klarna-capture {args[0]} {args[1] if len(args) > 1 else ''}: {done.stderr.strip()}")
    return done.stdout


def create_order(sandbox_url: str, amount: int, lines: list[dict[str, Any]] | None = None) -> str:
    """A shopper's order, authorized at Klarna (the sandbox): its id. Without `lines`, the
    sandbox's one line of the whole amount."""
    order: dict[str, Any] = {"order_amount": amount, "purchase_currency": "EUR"}
    if lines is not None:
        order["order_lines"] = lines
    created = httpx2.post(f"{sandbox_url}/sandbox/orders", json=order)
    if created.status_code != 201:
        fail(f"the sandbox refused the order: HTTP {created.status_code} {created.text}")
    order_id: str = created.json()["order_id"]
    return order_id


def sandbox_order(sandbox_url: str, order_id: str) -> Any:
    return httpx2.get(f"{sandbox_url}/sandbox/orders/{order_id}").json()


def has_job(env: dict[str, str], shop_id: str, state: str, key: str = "") -> bool:
    """Whether a job of the shop (with `key` in its key) is in `state`: "dead" (failed for good),
    "waiting" (on the Klarna credentials). Read from the demo's SQLite file beside the running
    service: a `klarna-capture jobs list` would start a process for each look."""
    database = Path(env["KLARNA_CAPTURE_DATA_DIR"]) / "klarna-capture.db"
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT key FROM jobs WHERE shop_id = ? AND state = ?", (shop_id, state)
        ).fetchall()
    finally:
        conn.close()
    return any(key in str(row[0]) for row in rows)


def wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SEED_WAIT_SECONDS
    while not done():
        if time.monotonic() > deadline:
            fail(f"gave up waiting for {what} after {SEED_WAIT_SECONDS:g} s")
        time.sleep(0.2)
