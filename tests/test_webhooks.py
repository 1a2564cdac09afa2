"""What every webhook receiver shares (plugin/webhooks.py), on each of them over real
HTTP with valid signatures: JSON nested too deep is a 400, a client that hangs up midway is no
error, and a malformed shop id is a 404 without a lookup."""

import base64
import hashlib
import hmac
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest

from plugin import signatures
from plugin.app import create_app
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce import signatures as woo_signatures
from plugin.sandbox import bigcommerce as bigcommerce_sandbox
from plugin.sandbox import shopify as shopify_sandbox
from plugin.sandbox.server import serve_in_thread
from plugin.service import Service, open_service
from plugin.store.records import Shop
from plugin.webhooks import MAX_JSON_DEPTH, nests_deeper
from tests.helpers import Storefront, wait_until
from tests.web.support import page_settings

SHOPIFY_DOMAIN = "tomatoes.myshopify.com"
STORE_HASH = "tomatoes1"
SITE = "https://tomatoes.example"

Signer = Callable[[bytes], tuple[str, dict[str, str]]]


class Running:
    def __init__(self, url: str, service: Service, signers: dict[str, Signer]) -> None:
        self.url = url
        self.service = service
        self.signers = signers


@pytest.fixture
def running(tmp_path: Path, klarna_url: str) -> Iterator[Running]:
    """The app with all four receivers set up, one shop on each, and a signer for each."""
    settings = page_settings(
        tmp_path,
        klarna_url,
        workers=0,
        extra={
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": shopify_sandbox.DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": shopify_sandbox.DEFAULT_CLIENT_SECRET,
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": bigcommerce_sandbox.DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": bigcommerce_sandbox.DEFAULT_CLIENT_SECRET,
        },
    )

    async def add_shops() -> tuple[tuple[Shop, str], tuple[Shop, str]]:
        async with open_service(settings) as service:
            shops = service.shops
            standard = await shops.create(**shop_fields("standard"))
            woo = await shops.create(**shop_fields("woocommerce"), shop_domain=SITE)
            await shops.install(platform="shopify", shop_domain=SHOPIFY_DOMAIN, token="t")
            await shops.install(platform="bigcommerce", shop_domain=STORE_HASH, token="t")
            return standard, woo

    (standard, standard_secret), (woo, woo_secret) = anyio.run(add_shops)
    app = create_app(settings)
    with serve_in_thread(app) as url:

        def sign_standard(body: bytes) -> tuple[str, dict[str, str]]:
            storefront = Storefront(url, standard.id, standard_secret)
            return storefront.url, storefront.signed(body)

        def sign_woocommerce(body: bytes) -> tuple[str, dict[str, str]]:
            key = woo_signatures.webhook_secret(signatures.parse_secret(woo_secret))
            digest = hmac.new(key, body, hashlib.sha256).digest()
            headers = {
                payloads.SIGNATURE_HEADER: base64.b64encode(digest).decode(),
                payloads.SOURCE_HEADER: SITE + "/",
                payloads.TOPIC_HEADER: "order.updated",
                "Content-Type": "application/json",
            }
            return f"{url}/webhooks/woocommerce/{woo.id}", headers

        def sign_shopify(body: bytes) -> tuple[str, dict[str, str]]:
            headers = shopify_sandbox.signed_webhook(
                shopify_sandbox.DEFAULT_CLIENT_SECRET, "fulfillments/create", SHOPIFY_DOMAIN, body
            )
            return f"{url}/webhooks/shopify", headers

        def sign_bigcommerce(body: bytes) -> tuple[str, dict[str, str]]:
            secret = bigcommerce_sandbox.DEFAULT_CLIENT_SECRET
            return f"{url}/webhooks/bigcommerce", bigcommerce_sandbox.signed_webhook(secret, body)

        signers = {
            "standard": sign_standard,
            "woocommerce": sign_woocommerce,
            "shopify": sign_shopify,
            "bigcommerce": sign_bigcommerce,
        }
        yield Running(url, app.state.service, signers)


def shop_fields(platform: str) -> dict[str, str]:
    return {
        "platform": platform,
        "name": "Tomatoes",
        "klarna_region": "eu",
        "klarna_environment": "playground",
        "klarna_username": "PK_1",
        "klarna_password": "pw",
    }


def nested(depth: int) -> bytes:
    """A JSON object whose one field holds arrays `depth` deep in all."""
    inner = depth - 1
    return b'{"type": "fulfillment.created", "data": ' + b"[" * inner + b"]" * inner + b"}"


PLATFORMS = ("standard", "woocommerce", "shopify", "bigcommerce")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_signed_json_nested_too_deep_is_a_400(running: Running, platform: str, depth: int) -> None:
    body = nested(depth)
    url, headers = running.signers[platform](body)
    answer = httpx2.post(url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["status"] == "too_deep"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_an_unsigned_deep_body_is_refused_for_its_signature_first(
    running: Running, platform: str
) -> None:
    # The nesting is counted only once the signature holds: without the secret, nobody gets
    # this service to spend a pass over a megabyte of brackets.
    body = nested(100_000)
    url, headers = running.signers[platform](b"{}")
    answer = httpx2.post(url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 401, answer.text
    assert answer.json()["status"] == "unauthorized"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_json_as_deep_as_allowed_goes_on_to_the_receiver(running: Running, platform: str) -> None:
    body = nested(MAX_JSON_DEPTH)
    url, headers = running.signers[platform](body)
    answer = httpx2.post(url, content=body, headers=headers, timeout=30)
    assert answer.json()["status"] != "too_deep"
    assert answer.status_code < 500


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """Every log record of the app and of uvicorn (whose loggers do not reach the root)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_client_that_hangs_up_midway_is_no_error(
    running: Running, records: Records, platform: str
) -> None:
    body = b'{"type": "fulfillment.created", "data": {}}'
    url, headers = running.signers[platform](body)
    parts = urlsplit(url)
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body) + 1000}\r\n\r\n"
    with socket.create_connection((parts.hostname or "", parts.port or 80)) as conn:
        conn.sendall(head.encode() + body)  # and hangs up, the body a thousand bytes short

    def reported() -> bool:
        return any(
            record.levelno >= logging.ERROR or "disconnected" in record.getMessage()
            for record in list(records.records)
        )

    wait_until(reported, timeout=30, what="for the hang-up to be noticed")
    errors = [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/standard/" + "x" * 32_000,
        "/webhooks/standard/shop_nosuchshop",
        "/webhooks/woocommerce/" + "x" * 32_000,
        "/webhooks/woocommerce/shop_%2e%2e",
    ],
)
def test_a_malformed_shop_id_is_a_404_without_a_lookup(running: Running, path: str) -> None:
    answer = httpx2.post(running.url + path, content=b"{}", timeout=30)
    assert (answer.status_code, answer.json()["status"]) == (404, "unknown_shop")
    assert running.service.shops.cached == 0


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b'{"a": [1, {"b": 2}], "c": [], "d": {}}', False),
        (b'{"a": [1, {"b": []}]}', True),
        (b'["[[[[[[[[", "]]]]", "\\"[[[[[["]', False),  # brackets in strings, escaped quotes
        (b'["\\\\", [[[]]]]', True),  # an escaped backslash ends no string
        (b"[[[[[", True),  # not JSON, and as deep as that while parsed
        (b"]]]]]]]]", False),
    ],
)
def test_nesting_is_counted_outside_strings(body: bytes, deeper: bool) -> None:
    assert nests_deeper(body, 3) is deeper
