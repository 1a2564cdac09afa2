"""`klarna-capture serve`, `worker`, `migrate`: how they start, where they say they listen, and
the one line they stop with."""

import contextlib
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import msgspec
import pytest

from plugin import about
from plugin.cli import processes
from tests.cli.support import add_shop
from tests.helpers import Server, free_port, run_cli


def test_bad_configuration_stops_with_one_clear_line(env: dict[str, str]) -> None:
    done = run_cli({**env, "KLARNA_CAPTURE_WORKERS": "lots"}, "migrate", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "klarna-capture: KLARNA_CAPTURE_WORKERS must be a whole number from 0 to 256, not 'lots'"
    ]


@pytest.mark.parametrize(
    ("database_url", "interval"),
    [("sqlite:///var/x.db", processes.GIL_SWITCH_SECONDS), ("postgresql://u@127.0.0.1/db", None)],
)
def test_the_gil_is_handed_off_sooner_only_where_a_writer_thread_needs_it(
    database_url: str, interval: float | None
) -> None:
    default = sys.getswitchinterval()
    try:
        processes._hand_off_the_gil_sooner(database_url)
        assert sys.getswitchinterval() == pytest.approx(interval or default)
    finally:
        sys.setswitchinterval(default)


def test_serve_keeps_its_data_dir_private_with_the_key_in_the_environment(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env.update(
        KLARNA_CAPTURE_DATA_DIR=str(data_dir),
        KLARNA_CAPTURE_SECRET_KEY="a-test-secret-key-of-some-length",
        KLARNA_CAPTURE_WORKERS="0",
        KLARNA_CAPTURE_METRICS_ADDRESS="off",
    )
    server = Server(env)
    try:
        names = {path.name for path in data_dir.iterdir()}
        assert {"klarna-capture.db", "klarna-capture.db-wal", "klarna-capture.db-shm"} <= names
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for path in data_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        server.stop()


@contextlib.contextmanager
def serve(env: dict[str, str], *args: str) -> Iterator[str]:
    """`serve ARGS` in a process of its own, for the block; the first line it prints (where it
    listens, once it does)."""
    with subprocess.Popen(
        [sys.executable, "-m", "plugin", "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        try:
            yield process.stderr.readline()
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_serve_says_where_it_listens_and_the_public_url_follows_it(env: dict[str, str]) -> None:
    shop = add_shop(env)
    unset = {k: v for k, v in env.items() if k != "KLARNA_CAPTURE_PUBLIC_URL"}
    unset["KLARNA_CAPTURE_METRICS_ADDRESS"] = "off"
    with serve(unset, "--port", "0") as said:  # any free port: only serve knows which
        assert said.startswith(f"klarna-capture {about.VERSION} listening on http://127.0.0.1:")
        url = said.split(" listening on ")[1].split(";")[0]
        assert f"; public URL {url} (" in said
        assert httpx2.get(f"{url}/readyz", timeout=10).json() == {"status": "ready"}

        # The other commands of this deployment print the URL serve listens on.
        link = run_cli(unset, "admin-link", shop["shop_id"]).stdout.strip()
        assert link.startswith(f"{url}/admin/login?token=")
        shown = msgspec.json.decode(run_cli(unset, "shop", "show", shop["shop_id"]).stdout)
        assert shown["webhook_url"] == f"{url}/webhooks/standard/{shop['shop_id']}"
        # KLARNA_CAPTURE_PUBLIC_URL, when set, is what they print.
        link = run_cli(env, "admin-link", shop["shop_id"]).stdout.strip()
        assert link.startswith("https://capture.example/admin/login?token=")

    with serve({**env, "KLARNA_CAPTURE_METRICS_ADDRESS": "off"}, "--port", "0") as said:
        assert said.endswith("; public URL https://capture.example (4 workers, database sqlite)\n")


def test_a_port_in_use_is_one_line_with_a_hint(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(env, "serve", "--port", str(port), check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"klarna-capture: cannot listen on 127.0.0.1:{port}: the port is already in use "
        "(another serve, or another program): stop it, or choose another port with --port"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [("serve", "--port"), ("sandbox", "klarna", "--port"), ("sandbox", "shopify", "--port")],
)
@pytest.mark.parametrize("port", ["80000", "-1"])
def test_a_port_out_of_range_is_refused(
    env: dict[str, str], command: tuple[str, ...], port: str
) -> None:
    # A process of its own: a port taken modulo 65536 would listen there, and not return.
    done = run_cli(env, *command, port, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "error: argument --port: a port must be a whole number from 0 to 65535"
    )


@pytest.fixture
def unreachable_postgres() -> str:
    return f"postgresql://capture:pw-never-shown@127.0.0.1:{free_port()}/capture"


@pytest.mark.parametrize("command", [("migrate",), ("shop", "list"), ("serve", "--port", "0")])
def test_postgres_that_cannot_be_reached_or_refuses_us_is_one_line(
    env: dict[str, str], postgres_url: str, unreachable_postgres: str, command: tuple[str, ...]
) -> None:
    server = urlsplit(postgres_url)
    refusing = f"postgresql://nobody:pw-never-shown@{server.netloc.rpartition('@')[2]}/postgres"
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    for url, reason in (
        (unreachable_postgres, "cannot reach PostgreSQL at 127.0.0.1:"),
        (refusing, f"PostgreSQL at {server.hostname}:{server.port} refused database 'postgres'"),
        (missing, f"PostgreSQL at {server.hostname}:{server.port} refused database 'no_such"),
    ):
        done = run_cli(
            {**env, "KLARNA_CAPTURE_DATABASE_URL": url, "KLARNA_CAPTURE_METRICS_ADDRESS": "off"},
            *command,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        [line] = [line for line in done.stderr.splitlines() if "secret key" not in line]
        assert line.startswith("klarna-capture: " + reason), line
        assert line.endswith("(KLARNA_CAPTURE_DATABASE_URL)")
        assert "pw-never-shown" not in done.stderr + done.stdout
