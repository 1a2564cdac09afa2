import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from plugin.klarna import Credentials, KlarnaClient, KlarnaError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx2.get(f"{url}/sandbox/orders/none", timeout=1)
                break
            except httpx2.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
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
