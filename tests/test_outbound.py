"""The merchant-bound HTTP clients against real loopback servers that misbehave: a deadline for
the whole request, a cap on the body read, and the address guard in the connect."""

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest

from plugin.config import load_settings
from plugin.outbound import (
    MAX_ERROR_BODY,
    AddressGuard,
    AddressRefused,
    Bounds,
    DeadlineExceeded,
    ResponseTooLarge,
    literal_address,
    make_client,
    url_problem,
)
from plugin.platforms.base import StorefrontApp
from plugin.platforms.woocommerce.adapter import RestClient, WooCommerceError
from plugin.platforms.woocommerce.api_key import ApiKey
from plugin.retries import RetryPolicy
from plugin.service import open_service

pytestmark = pytest.mark.anyio

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
QUICK = Bounds(deadline=1.0, connect=1.0, max_body=64 * 1024)
# More than any answer is allowed to be, many times over.
HUGE = 400 * 1024 * 1024


class RawServer:
    """A TCP server on loopback that answers every connection with `answer`, counting the
    connections and the bytes it managed to hand to the kernel."""

    def __init__(self, answer: Callable[["RawServer", asyncio.StreamWriter], Awaitable[None]]):
        self.answer = answer
        self.connections = 0
        self.sent = 0
        self.handlers: list[tuple[asyncio.Task[Any], asyncio.StreamWriter]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append((task, writer))
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await self.answer(self, writer)
        writer.close()

    async def stop(self) -> None:
        """Cut every connection still answering and wait for its handler to end."""
        for _, writer in self.handlers:
            writer.transport.abort()
        await asyncio.gather(*(task for task, _ in self.handlers), return_exceptions=True)

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)


@contextlib.asynccontextmanager
async def serving(
    answer: Callable[[RawServer, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[RawServer, int]]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    async with server:
        try:
            yield raw, server.sockets[0].getsockname()[1]
        finally:
            await raw.stop()


async def drip_headers(raw: RawServer, writer: asyncio.StreamWriter) -> None:
    await raw.send(writer, b"HTTP/1.1 200 OK\r\n")
    for n in range(300):  # a minute at most: the headers never end before
        await raw.send(writer, f"X-Drip-{n}: 1\r\n".encode())
        await asyncio.sleep(0.2)


async def drip_body(raw: RawServer, writer: asyncio.StreamWriter) -> None:
    await raw.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n")
    for _ in range(300):
        await raw.send(writer, b"x")
        await asyncio.sleep(0.2)


def huge(status: str, *, declared: bool) -> Callable[[RawServer, asyncio.StreamWriter], Any]:
    async def answer(raw: RawServer, writer: asyncio.StreamWriter) -> None:
        length = f"Content-Length: {HUGE}\r\n" if declared else "Connection: close\r\n"
        await raw.send(writer, f"HTTP/1.1 {status}\r\n{length}\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(HUGE // len(chunk)):
            await raw.send(writer, chunk)

    return answer


async def ok(raw: RawServer, writer: asyncio.StreamWriter) -> None:
    await raw.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def allowing_loopback() -> AddressGuard:
    return AddressGuard([LOOPBACK])


@pytest.mark.parametrize("answer", [drip_headers, drip_body], ids=["headers", "body"])
async def test_an_answer_that_drips_fails_at_the_deadline(
    answer: Callable[[RawServer, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with (
        serving(answer) as (raw, port),
        make_client(QUICK, guard=allowing_loopback()) as client,
    ):
        with pytest.raises(DeadlineExceeded, match="no complete answer within 1 s"):
            await client.post(f"http://127.0.0.1:{port}/status", content=b"{}")

    # Each drip comes well within a per-read timeout: only a whole-request deadline ends it.
    # At one line per 0.2 s, the deadline of 1 s ends it long before the 300 lines.
    assert raw.sent < 100 * 20


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
async def test_a_huge_success_answer_fails_and_is_not_read(declared: bool) -> None:
    async with (
        serving(huge("200 OK", declared=declared)) as (raw, port),
        make_client(QUICK, guard=allowing_loopback()) as client,
    ):
        with pytest.raises(ResponseTooLarge):
            await client.get(f"http://127.0.0.1:{port}/wp-json/wc/v3/orders/1")

    # What the kernel buffered at most, nowhere near the 400 MB.
    assert raw.sent < 64 * 1024 * 1024


async def test_a_huge_error_answer_is_cut_to_its_start() -> None:
    async with (
        serving(huge("500 Internal Server Error", declared=False)) as (raw, port),
        make_client(QUICK, guard=allowing_loopback()) as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/")

    assert response.status_code == 500
    assert len(response.content) == MAX_ERROR_BODY
    assert raw.sent < 64 * 1024 * 1024


async def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed() -> None:
    async with serving(ok) as (raw, port):
        async with make_client(QUICK, guard=AddressGuard()) as client:
            with pytest.raises(AddressRefused, match="outside the public internet"):
                await client.get(f"http://localhost:{port}/status")
        assert raw.connections == 0

        async with make_client(QUICK, guard=allowing_loopback()) as client:
            response = await client.get(f"http://localhost:{port}/status")
        assert (response.status_code, response.content) == (200, b"ok")
        assert raw.connections == 1


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "[::ffff:127.0.0.1]"],
)
async def test_every_spelling_of_loopback_is_refused_at_call_time(host: str) -> None:
    async with serving(ok) as (raw, port), make_client(QUICK, guard=AddressGuard()) as client:
        with pytest.raises(AddressRefused):
            await client.get(f"http://{host}:{port}/status")
    assert raw.connections == 0


async def test_the_trusted_client_has_the_bounds_but_no_guard() -> None:
    async with serving(drip_headers) as (raw, port), make_client(QUICK, guard=None) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get(f"http://127.0.0.1:{port}/admin/api/graphql.json")
    assert raw.connections == 1


async def test_the_trusted_client_keeps_the_environments_proxy_and_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving(huge("200 OK", declared=False)) as (proxy, port):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with make_client(QUICK, guard=None) as client:
            with pytest.raises(ResponseTooLarge):
                await client.get("http://api.bigcommerce.invalid/stores/abc/v2/orders/1")
        assert proxy.connections == 1
        # The guarded client takes no proxy: it connects where its own check allows.
        async with make_client(QUICK, guard=AddressGuard()) as client:
            with pytest.raises(AddressRefused):
                await client.get("http://localhost/status")
        assert proxy.connections == 1


async def test_a_transport_given_for_tests_still_gets_the_cap() -> None:
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, content=b"x" * 70000))
    async with make_client(QUICK, guard=AddressGuard(), transport=transport) as client:
        with pytest.raises(ResponseTooLarge):
            await client.get("https://shop.example/")


# Every address outside the public internet, spelled as a merchant might.
REFUSED = [
    "127.0.0.1",
    "127.1",
    "2130706433",  # decimal
    "0x7f.0.0.1",  # hex
    "0177.0.0.1",  # octal
    "017700000001",
    "0.0.0.0",  # noqa: S104 (an address to refuse, not one to bind)
    "10.0.0.1",
    "012.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "192.0.0.8",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[::a00:1]",
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b:1::a00:1]",  # local-use NAT64
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
    "[fc00::1]",  # unique local
    "[fd12:3456::1]",
    "[fe80::1]",  # link-local
    "[fec0::1]",  # site-local
    "[ff02::1]",  # multicast
    "[2001:db8::1]",  # documentation
    "[100::1]",  # discard
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "[2606:4700::1111]", "[::ffff:8.8.8.8]", "[64:ff9b::808:808]"]


@pytest.mark.parametrize("host", REFUSED)
def test_the_guard_refuses_every_spelling(host: str) -> None:
    address = literal_address(host)
    assert address is not None
    assert AddressGuard().refuses(address)


@pytest.mark.parametrize("host", PUBLIC)
def test_the_guard_lets_public_addresses_through(host: str) -> None:
    address = literal_address(host)
    assert address is not None
    assert not AddressGuard().refuses(address)


def test_allowed_networks_let_only_themselves_through() -> None:
    guard = AddressGuard([ipaddress.ip_network("10.1.0.0/16"), LOOPBACK])
    assert not guard.refuses(ipaddress.ip_address("10.1.2.3"))
    assert not guard.refuses(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert guard.refuses(ipaddress.ip_address("10.2.0.1"))
    assert guard.refuses(ipaddress.ip_address("169.254.169.254"))


@pytest.mark.parametrize("host", ["localhost", *REFUSED])
async def test_urls_are_checked_before_they_are_saved(host: str) -> None:
    problem = await url_problem(f"https://{host}/status", AddressGuard())
    assert problem is not None
    assert "not a public internet address" in problem
    assert await url_problem("https://localhost/status", allowing_loopback()) is None


# --- what the merchant is shown ------------------------------------------------------------------

KEY = ApiKey(consumer_key="ck_" + "1" * 40, consumer_secret="cs_" + "2" * 40)
ONCE = RetryPolicy(attempts=1)
# What an internal service behind a merchant-entered site URL might answer.
INTERNAL = b'{"code": "internal_db", "message": "root password hunter2", "data": "hunter2"}'


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500, 503, 302])
async def test_a_woocommerce_error_never_echoes_what_the_site_answered(status: int) -> None:
    def internal(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=INTERNAL, headers={"Location": "http://hunter2/"})

    transport = httpx2.MockTransport(internal)
    async with make_client(QUICK, guard=AddressGuard(), transport=transport) as http:
        client = RestClient("https://shop.example", KEY, http=http, retry=ONCE)
        with pytest.raises(WooCommerceError) as caught:
            await client.order("1")

    assert caught.value.status == status
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in " ".join(caught.value.messages)
    assert "INTERNAL_DB" not in caught.value.code


async def test_woocommerces_own_error_codes_are_kept() -> None:
    answer = b'{"code": "woocommerce_rest_shop_order_invalid_id", "message": "Invalid ID."}'
    transport = httpx2.MockTransport(lambda request: httpx2.Response(404, content=answer))
    async with make_client(QUICK, guard=AddressGuard(), transport=transport) as http:
        client = RestClient("https://shop.example", KEY, http=http, retry=ONCE)
        with pytest.raises(WooCommerceError) as caught:
            await client.order("1")

    assert caught.value.code == "ORDER_NOT_FOUND"


async def test_a_woocommerce_site_on_a_refused_address_fails_for_good() -> None:
    async with serving(ok) as (raw, port), make_client(QUICK, guard=AddressGuard()) as http:
        client = RestClient(f"http://localhost:{port}", KEY, http=http, retry=ONCE)
        with pytest.raises(WooCommerceError) as caught:
            await client.order("1")

    assert (caught.value.code, caught.value.retryable) == ("ADDRESS_REFUSED", False)
    assert "not on the public internet" in str(caught.value)
    assert raw.connections == 0


# --- the service's clients -----------------------------------------------------------------------


async def test_the_service_bounds_every_merchant_bound_client_and_guards_merchant_urls(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "a-test-secret-key-of-some-length",
        }
    )
    async with (
        serving(huge("200 OK", declared=False)) as (raw, port),
        open_service(settings) as service,
    ):
        storefronts = service.pipeline.storefronts
        # The status URL and the WooCommerce site are the merchant's: guarded.
        assert cast(StorefrontApp, storefronts["woocommerce"]).http is service.site_http
        for client in (service.site_http, service.pipeline.status_http):
            with pytest.raises(AddressRefused):
                await client.get(f"http://localhost:{port}/")
        assert raw.connections == 0
        # Shopify's and BigCommerce's API hosts are the operator's: bounded, not guarded.
        for platform in ("shopify", "bigcommerce"):
            assert cast(StorefrontApp, storefronts[platform]).http is service.storefront_http
        with pytest.raises(ResponseTooLarge):
            await service.storefront_http.get(f"http://localhost:{port}/admin/api/graphql.json")
        assert raw.connections == 1
