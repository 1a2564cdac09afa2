"""`klarna-capture sandbox`: each simulator runs alone, where it says."""

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from plugin.klarna import Credentials, KlarnaClient, KlarnaError
from tests.helpers import free_port


def first_answer(process: "subprocess.Popen[str]", url: str) -> httpx2.Response:
    """`url`'s answer once the simulator `process` started listens (20 s at most); the process
    ending first fails the test."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return httpx2.get(url, timeout=1)
        except httpx2.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def sandbox_process() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plugin",
            "sandbox",
            "klarna",
            "--port",
            str(port),
            "--username",
            "PK_CLI",
            "--password",
            "cli-secret",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        first_answer(process, f"{url}/sandbox/orders/none")
        yield url
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"Klarna sandbox on {url} (API username 'PK_CLI')" in output


@pytest.mark.anyio
async def test_the_sandbox_runs_alone_with_the_credentials_it_was_given(
    sandbox_process: str,
) -> None:
    created = httpx2.post(
        f"{sandbox_process}/sandbox/orders",
        json={"order_amount": 1000, "purchase_currency": "EUR"},
    )
    assert created.status_code == 201
    order_id = created.json()["order_id"]

    async with KlarnaClient(Credentials("PK_CLI", "cli-secret"), url=sandbox_process) as client:
        assert (await client.read_order(order_id)).order_amount == 1000
    async with KlarnaClient(Credentials("PK_CLI", "wrong"), url=sandbox_process) as client:
        with pytest.raises(KlarnaError, match="HTTP 401"):
            await client.read_order(order_id)


def test_username_without_password_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "plugin", "sandbox", "klarna", "--username", "PK"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "give --username and --password together" in done.stderr


def test_the_woocommerce_sandbox_runs_alone_with_its_published_key() -> None:
    from plugin.sandbox.woocommerce import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "plugin", "sandbox", "woocommerce", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    orders = f"http://127.0.0.1:{port}/shop/wp-json/wc/v3/orders/1"
    try:
        anonymous = first_answer(process, orders)
        keyed = httpx2.get(orders, auth=(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET))
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert anonymous.status_code == 401
    assert (keyed.status_code, keyed.json()["code"]) == (
        404,
        "woocommerce_rest_shop_order_invalid_id",
    )
    assert f"a site at http://127.0.0.1:{port}/shop" in output
    assert DEFAULT_CONSUMER_SECRET not in output


@pytest.mark.parametrize(
    ("name", "banner"),
    [
        ("shopify", "Shopify sandbox on"),
        ("woocommerce", "WooCommerce"),
        ("bigcommerce", "BigCommerce sandbox on"),
    ],
)
def test_the_storefront_sandboxes_run_alone_where_they_say(name: str, banner: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "plugin", "sandbox", name, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first_answer(process, f"{url}/no-such-path").status_code == 404
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert url in output
    assert banner in output
