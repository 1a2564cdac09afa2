"""The HTTP limits of `serve` (plugin/server.py), over real sockets to the real app under uvicorn
as `serve` runs it: a head too large is refused, and connections that send their head or body
too slowly, or nothing at all, are closed."""

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import uvicorn

from plugin import server
from plugin.app import create_app
from tests.helpers import Server
from tests.web.support import page_settings

GENEROUS_SECONDS = 30.0  # far above the deadlines below: only a connection left open exceeds it


class QuickLimits(server.LimitedHttpTools):
    """The limits of `serve`, with deadlines short enough for a test."""

    head_seconds = 1.0
    body_seconds = 1.0


@pytest.fixture
def address(tmp_path: Path, klarna_url: str) -> Iterator[tuple[str, int]]:
    app = create_app(page_settings(tmp_path, klarna_url, workers=0))
    config = server.config(app, host="127.0.0.1", port=0, protocol=QuickLimits)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield "127.0.0.1", running.servers[0].sockets[0].getsockname()[1]
    running.should_exit = True
    thread.join(timeout=10)


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=GENEROUS_SECONDS)


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def send_all(conn: socket.socket, data: bytes) -> None:
    """Send what the server takes: it may close midway, having refused what it read."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.sendall(data)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /healthz?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 12345678901234567890\r\n" * 5000,
    ],
    ids=["header-line", "request-line", "many-headers"],
)
def test_a_head_over_the_limit_gets_431_and_the_connection_closes(
    address: tuple[str, int], request_head: bytes
) -> None:
    with connect(address) as conn:
        send_all(conn, request_head)
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_head_under_the_limit_is_served_and_requests_follow_on_the_connection(
    address: tuple[str, int],
) -> None:
    big = "a" * (server.MAX_HEAD_BYTES - 1024)
    with httpx2.Client(base_url=f"http://{address[0]}:{address[1]}") as client:
        for _ in range(3):
            assert client.get("/healthz", headers={"X-Big": big}).status_code == 200


def test_a_head_sent_a_byte_at_a_time_is_cut_off(address: tuple[str, int]) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with connect(address) as conn:
        conn.settimeout(0.2)
        started = time.monotonic()
        closed = False
        for byte in head:
            send_all(conn, bytes([byte]))
            try:
                closed = conn.recv(65536) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
            if closed or time.monotonic() - started > GENEROUS_SECONDS:
                break
    assert closed, "the connection stayed open while its head dripped in"


def test_a_connection_that_sends_nothing_is_closed(address: tuple[str, int]) -> None:
    with connect(address) as conn:
        assert read_until_closed(conn) == b""


def test_a_body_that_does_not_arrive_is_cut_off(address: tuple[str, int]) -> None:
    with connect(address) as conn:
        conn.sendall(
            b"POST /webhooks/standard/shop_0123456789ab HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"{" * 10
        )
        read_until_closed(conn)


@pytest.mark.parametrize(
    ("trusted_proxies", "scheme"),
    [(None, "https"), ("127.0.0.0/8", "https"), ("10.0.0.1", "http")],
    ids=["default-loopback", "loopback-network", "another-address"],
)
def test_serve_believes_forwarded_headers_from_its_trusted_proxies_only(
    tmp_path: Path, trusted_proxies: str | None, scheme: str
) -> None:
    """What the app builds from a request (Starlette's redirect of a trailing slash) names https
    when the proxy that ended TLS says so, and only when that proxy is a trusted one: this client
    connects from 127.0.0.1."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")},
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_WORKERS": "0",
        "KLARNA_CAPTURE_METRICS_ADDRESS": "off",
    }
    if trusted_proxies is not None:
        env["KLARNA_CAPTURE_TRUSTED_PROXIES"] = trusted_proxies
    serve = Server(env)
    try:
        response = httpx2.get(
            f"{serve.url}/healthz/",
            headers={"host": "capture.example.com", "x-forwarded-proto": "https"},
            timeout=GENEROUS_SECONDS,
        )
    finally:
        serve.stop()
    assert response.status_code == 307
    assert response.headers["location"] == f"{scheme}://capture.example.com/healthz"
