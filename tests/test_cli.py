import argparse
import ast
import contextlib
import json
import os
import pty
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.from_thread
import httpx2
import msgspec
import pytest

from plugin import about, cli, signatures
from plugin.cli import processes
from plugin.config import ensure_secret_keys, load_settings
from plugin.klarna import Credentials, KlarnaClient, KlarnaError
from plugin.platforms.woocommerce import mapping as woocommerce
from plugin.service import open_service
from tests.helpers import ALLOW_LOOPBACK, Server, cli_shop, free_port, run_cli


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


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_PUBLIC_URL": "https://capture.example",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
        **ALLOW_LOOPBACK,
    }


def add_shop(env: dict[str, str], *extra: str) -> dict[str, str]:
    return cli_shop(
        env, *extra, name="Corner shop", username="PK_CORNER", password="the-klarna-password"
    )


def listed_shops(env: dict[str, str]) -> list[str]:
    """The ids `shop list --json` prints."""
    return [
        shop["shop_id"]
        for shop in msgspec.json.decode(run_cli(env, "shop", "list", "--json").stdout)
    ]


def refused_shop_add(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`shop add` of a standard shop with `extra` arguments, expected to be refused."""
    return run_cli(
        env,
        "shop",
        "add",
        "--name",
        "Refused",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "live",
        "--klarna-username",
        "PK",
        "--klarna-password-stdin",
        *extra,
        stdin="pw\n",
        check=False,
    )


def test_shop_add_prints_its_id_path_and_secret_and_stores_no_secret_in_clear(
    env: dict[str, str], tmp_path: Path
) -> None:
    first = run_cli(env, "migrate")
    assert "created a secret key in" in first.stderr  # no KLARNA_CAPTURE_SECRET_KEY: one is made
    assert (tmp_path / "secret-key").stat().st_mode & 0o777 == 0o600
    shop = add_shop(env, "--status-url", "https://shop.example/klarna-status")
    assert set(shop) == {"shop_id", "webhook_path", "webhook_secret"}
    assert shop["webhook_path"] == f"/webhooks/standard/{shop['shop_id']}"
    assert len(signatures.parse_secret(shop["webhook_secret"])) == 32

    raw = (tmp_path / "klarna-capture.db").read_bytes()
    for stored in (tmp_path / "klarna-capture.db-wal",):
        if stored.exists():
            raw += stored.read_bytes()
    assert b"the-klarna-password" not in raw
    assert shop["webhook_secret"].encode() not in raw

    listed = run_cli(env, "shop", "list").stdout
    assert shop["shop_id"] in listed
    assert "Corner shop" in listed
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop["shop_id"]).stdout)
    assert shown["klarna_password"] == "set"
    assert shown["webhook_url"] == (f"https://capture.example/webhooks/standard/{shop['shop_id']}")
    assert shown["status_url"] == "https://shop.example/klarna-status"
    assert "the-klarna-password" not in str(shown)
    assert shop["webhook_secret"] not in str(shown)


def test_shop_add_takes_a_description_template_of_plain_fields_only(env: dict[str, str]) -> None:
    shop = add_shop(env, "--description-template", "Parcel {fulfillment_name} of {order_id}")
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop["shop_id"]).stdout)
    assert shown["options"]["description_template"] == "Parcel {fulfillment_name} of {order_id}"

    for template in ("{fulfillment_name:>1500000000}", "{order_id!r}", "{order_id[0]}", "{}"):
        done = refused_shop_add(env, "--description-template", template)
        assert done.returncode == 2, template
        assert done.stderr.startswith(
            "klarna-capture: --description-template: Write each field as it is, with nothing "
            "else inside its braces: {fulfillment_name}, {fulfillment_id}, {order_id}."
        )
    unknown = refused_shop_add(env, "--description-template", "{nope}")
    assert unknown.returncode == 2
    assert "Unknown field {nope}" in unknown.stderr
    assert listed_shops(env) == [shop["shop_id"]]


def test_rotate_secret_keeps_the_old_one_for_a_while(env: dict[str, str]) -> None:
    shop = add_shop(env)
    rotated = run_cli(env, "shop", "rotate-secret", shop["shop_id"]).stdout
    new_secret = rotated.split()[3]
    assert new_secret.startswith("whsec_")
    assert new_secret != shop["webhook_secret"]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop["shop_id"]).stdout)
    expiries = [secret["expires_at"] for secret in shown["webhook_secrets"]]
    assert expiries[0] is None
    assert expiries[1] is not None


def test_shop_remove_and_unknown_ids(env: dict[str, str]) -> None:
    shop = add_shop(env)
    assert "removed" in run_cli(env, "shop", "remove", "--yes", shop["shop_id"]).stdout
    gone = run_cli(env, "shop", "show", shop["shop_id"], check=False)
    assert (gone.returncode, gone.stderr.strip()) == (
        1,
        f"klarna-capture: no shop {shop['shop_id']}",
    )
    assert run_cli(env, "jobs", "retry", "999", check=False).returncode == 1
    assert run_cli(env, "deliveries", "replay", "999", check=False).returncode == 1


def test_the_password_never_comes_from_the_command_line(env: dict[str, str]) -> None:
    done = run_cli(
        env,
        "shop",
        "add",
        "--name",
        "S",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "live",
        "--klarna-username",
        "PK",
        "--klarna-password",
        "oops",
        check=False,
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --klarna-password oops" in done.stderr


def test_bad_configuration_stops_with_one_clear_line(env: dict[str, str]) -> None:
    done = run_cli({**env, "KLARNA_CAPTURE_WORKERS": "lots"}, "migrate", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "klarna-capture: KLARNA_CAPTURE_WORKERS must be a whole number from 0 to 256, not 'lots'"
    ]


def test_jobs_list_retry_and_deliveries_replay(env: dict[str, str]) -> None:
    shop = add_shop(env)
    settings = load_settings(env)

    async def a_dead_letter() -> tuple[int, int]:
        async with open_service(ensure_secret_keys(settings)[0]) as service:
            store = service.store
            delivery, _ = await store.record_delivery(
                shop["shop_id"],
                "msg_1",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id="1001-F1",
                rejected=None,
                now=time.time(),
            )
            job = await store.claim_job("test", 60, time.time())
            assert job is not None
            error = (
                '{"step": "capture", "error_code": "CAPTURE_NOT_ALLOWED", "correlation_id": "c-1"}'
            )
            assert await store.bury_job(job.id, "test", error, time.time())
            return job.id, delivery

    job_id, delivery_id = anyio.run(a_dead_letter)
    header, line = run_cli(env, "jobs", "list", "--dead").stdout.splitlines()
    assert header.split() == [
        "JOB_ID",
        "STATE",
        "KIND",
        "SHOP_ID",
        "KEY",
        "ATTEMPTS",
        "UPDATED",
        "ERROR",
    ]
    assert line.split()[:3] == [str(job_id), "dead", "fulfillment"]
    assert line.endswith("capture: CAPTURE_NOT_ALLOWED (correlation_id c-1)")
    [dead] = msgspec.json.decode(run_cli(env, "jobs", "list", "--dead", "--json").stdout)
    assert (dead["job_id"], dead["state"], dead["shop_id"]) == (job_id, "dead", shop["shop_id"])
    assert dead["error"] == "capture: CAPTURE_NOT_ALLOWED (correlation_id c-1)"
    assert run_cli(env, "jobs", "retry", str(job_id)).stdout == f"job {job_id} queued again\n"
    assert run_cli(env, "jobs", "list", "--dead").stdout == ""
    assert run_cli(env, "jobs", "list").stdout.splitlines()[1].split()[:2] == [
        str(job_id),
        "queued",
    ]
    replayed = run_cli(env, "deliveries", "replay", str(delivery_id)).stdout
    assert replayed == f"delivery {delivery_id} replayed: job {job_id} queued\n"


# --- WooCommerce shops ---------------------------------------------------------------------------

WOO_KEY = "ck_" + "a1" * 20
WOO_SECRET = "cs_" + "b2" * 20


def add_woocommerce_shop(
    env: dict[str, str], *extra: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        env,
        "shop",
        "add",
        "--platform",
        "woocommerce",
        "--name",
        "Tomato farm",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "playground",
        "--klarna-username",
        "PK_FARM",
        "--klarna-password-stdin",
        "--consumer-secret-stdin",
        *extra,
        stdin=f"the-klarna-password\n{WOO_SECRET}\n" if stdin is None else stdin,
        check=check,
    )


def test_a_woocommerce_shop_is_added_with_its_site_and_sealed_api_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = add_woocommerce_shop(
        env,
        "--site-url",
        "https://Tomato-Farm.example/shop/",
        "--consumer-key",
        WOO_KEY,
        "--capture-statuses",
        "completed, wc-shipped",
    )

    assert done.stdout.startswith("shop shop_")
    assert "/webhooks/woocommerce/shop_" in done.stdout
    assert "Order updated and Order created" in done.stdout
    [secret] = [line.split()[2] for line in done.stdout.splitlines() if "webhook secret" in line]
    shop_id = done.stdout.split()[1]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)
    assert (shown["platform"], shown["site_url"], shown["rest_api_key"]) == (
        "woocommerce",
        "https://tomato-farm.example/shop",
        "set",
    )
    assert shown["webhook_url"] == f"https://capture.example/webhooks/woocommerce/{shop_id}"
    assert shown["options"]["capture_statuses"] == ["completed", "shipped"]
    assert WOO_KEY not in json.dumps(shown)

    async def stored() -> woocommerce.ApiKey:
        settings, _ = ensure_secret_keys(load_settings(env))
        async with open_service(settings) as service:
            shop = await service.store.get_shop(shop_id)
            assert shop is not None
            token = service.shops.platform_token(shop)
            assert token is not None
            return woocommerce.decode_api_key(token)

    assert anyio.run(stored) == woocommerce.ApiKey(consumer_key=WOO_KEY, consumer_secret=WOO_SECRET)
    raw = b"".join(
        path.read_bytes() for path in tmp_path.glob("klarna-capture.db*") if path.is_file()
    )
    for clear in (WOO_SECRET, WOO_KEY, "the-klarna-password", secret):
        assert clear.encode() not in raw


@pytest.mark.parametrize(
    ("extra", "stdin", "error"),
    [
        ((), None, "needs --site-url and --consumer-key"),
        (("--site-url", "https://shop.example"), None, "needs --site-url and --consumer-key"),
        (
            ("--site-url", "http://shop.example", "--consumer-key", WOO_KEY),
            None,
            "https only",
        ),
        (
            ("--site-url", "https://shop.example", "--consumer-key", WOO_SECRET),
            None,
            "consumer key starts with ck_",
        ),
        (
            ("--site-url", "https://shop.example", "--consumer-key", WOO_KEY),
            "the-klarna-password\n",
            "Enter the consumer secret.",
        ),
        (
            ("--site-url", "https://shop.example", "--consumer-key", WOO_KEY),
            "the-klarna-password\nck_swapped\n",
            "consumer secret starts with cs_",
        ),
        (
            (
                "--site-url",
                "https://shop.example",
                "--consumer-key",
                WOO_KEY,
                "--capture-statuses",
                "done!",
            ),
            None,
            "not an order status",
        ),
    ],
)
def test_a_woocommerce_shop_needs_a_working_site_and_key(
    env: dict[str, str], extra: tuple[str, ...], stdin: str | None, error: str
) -> None:
    done = add_woocommerce_shop(env, *extra, stdin=stdin, check=False)
    assert done.returncode == 2
    assert error in done.stderr
    assert WOO_SECRET not in done.stderr + done.stdout
    assert run_cli(env, "shop", "list").stdout == ""


def test_woocommerce_options_are_refused_for_other_platforms_and_sites_are_not_shared(
    env: dict[str, str],
) -> None:
    done = refused_shop_add(env, "--site-url", "https://shop.example")
    assert done.returncode == 2
    assert "--site-url is for --platform woocommerce" in done.stderr

    site = ("--site-url", "https://shop.example", "--consumer-key", WOO_KEY)
    add_woocommerce_shop(env, *site)
    again = add_woocommerce_shop(env, *site, check=False)
    assert again.returncode == 1
    assert "a shop is already connected to https://shop.example" in again.stderr
    assert len(listed_shops(env)) == 1


def test_without_the_consumer_secret_on_stdin_nothing_is_created(env: dict[str, str]) -> None:
    done = run_cli(
        env,
        "shop",
        "add",
        "--platform",
        "woocommerce",
        "--name",
        "Farm",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "live",
        "--klarna-username",
        "PK",
        "--klarna-password-stdin",
        "--site-url",
        "https://shop.example",
        "--consumer-key",
        WOO_KEY,
        stdin="pw\n" + WOO_SECRET + "\n",
        check=False,
    )
    assert done.returncode == 2
    assert "give the consumer secret on standard input with --consumer-secret-stdin" in done.stderr
    assert run_cli(env, "shop", "list").stdout == ""


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
        deadline = time.monotonic() + 20
        while True:
            try:
                anonymous = httpx2.get(orders, timeout=1)
                break
            except httpx2.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
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
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx2.get(f"{url}/no-such-path", timeout=1)
                break
            except httpx2.TransportError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer.status_code == 404
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert url in output
    assert banner in output


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


@pytest.mark.parametrize(
    "host", ["localhost", "127.1", "2130706433", "0x7f.0.0.1", "[::ffff:127.0.0.1]", "10.0.0.1"]
)
def test_a_status_url_off_the_public_internet_is_refused(env: dict[str, str], host: str) -> None:
    strict = {**env, "KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": ""}
    done = refused_shop_add(strict, "--status-url", f"http://{host}:8080/status")
    assert done.returncode == 2
    assert "klarna-capture: --status-url: " in done.stderr
    assert "is not a public internet address" in done.stderr
    assert run_cli(strict, "shop", "list").stdout == ""
    # Allowed by the operator, the same address is taken.
    allowed = {**env, "KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,10.0.0.0/8"}
    assert add_shop(allowed, "--status-url", f"http://{host}:8080/status")["shop_id"]


def test_a_woocommerce_site_off_the_public_internet_is_refused(env: dict[str, str]) -> None:
    strict = {**env, "KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": ""}
    site = ("--site-url", "https://169.254.169.254", "--consumer-key", WOO_KEY)

    done = add_woocommerce_shop(strict, *site, check=False)

    assert done.returncode == 2
    assert "klarna-capture: --site-url: 169.254.169.254 is not a public" in done.stderr
    assert run_cli(strict, "shop", "list").stdout == ""


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


# --- prune ---------------------------------------------------------------------------------------


def test_prune_dry_run_changes_nothing_and_prune_prints_what_it_deleted(
    env: dict[str, str], store_env: dict[str, str]
) -> None:
    store_env = {**env, **store_env}  # this module's settings, on each store
    shop = add_shop(store_env)
    settings = ensure_secret_keys(load_settings(store_env))[0]
    month_ago = time.time() - 31 * 86400

    async def shipments() -> dict[str, int]:
        """A settled shipment and a dead letter, both a month old; their delivery row ids."""
        async with open_service(settings) as service:
            rows = {}
            for fulfillment_id in ("1001-F1", "1002-F1"):
                rows[fulfillment_id], _ = await service.store.record_delivery(
                    shop["shop_id"],
                    f"msg_{fulfillment_id}",
                    body=b'{"name": "Ada"}',
                    event_type="fulfillment.created",
                    fulfillment_id=fulfillment_id,
                    rejected=None,
                    now=month_ago,
                )
                job = await service.store.claim_job("test", 60, month_ago)
                assert job is not None
                if fulfillment_id == "1001-F1":
                    assert await service.store.finish_job(job.id, "test", month_ago)
                else:
                    assert await service.store.bury_job(job.id, "test", "{}", month_ago)
            return rows

    async def bodies(rows: dict[str, int]) -> dict[str, bytes]:
        async with open_service(settings) as service:
            found = {key: await service.store.get_delivery(row) for key, row in rows.items()}
            return {key: delivery.body for key, delivery in found.items() if delivery}

    rows = anyio.run(shipments)
    dry = run_cli(store_env, "prune", "--dry-run").stdout.splitlines()
    assert "deliveries.body              1 bodies would be emptied" in dry
    assert "jobs                         1 rows would be deleted" in dry
    assert "deliveries                   0 rows would be deleted" in dry
    assert anyio.run(bodies, rows) == {"1001-F1": b'{"name": "Ada"}', "1002-F1": b'{"name": "Ada"}'}
    assert "1001-F1" in run_cli(store_env, "jobs", "list").stdout

    done = run_cli(store_env, "prune").stdout.splitlines()
    assert "deliveries.body              1 bodies emptied" in done
    assert "jobs                         1 rows deleted" in done
    # The dead letter keeps its body; the settled shipment's is gone, and cannot be replayed.
    assert anyio.run(bodies, rows) == {"1001-F1": b"", "1002-F1": b'{"name": "Ada"}'}
    listed = run_cli(store_env, "jobs", "list").stdout
    assert "1001-F1" not in listed
    assert "1002-F1" in listed
    replay = run_cli(store_env, "deliveries", "replay", str(rows["1001-F1"]), check=False)
    assert replay.returncode == 1
    assert "body was removed" in replay.stderr
    assert "deliveries.body              0 bodies emptied" in run_cli(store_env, "prune").stdout


# --- the operator's CLI and start-up -------------------------------------------------------------


def test_the_version_is_the_one_in_pyproject_also_from_a_checkout_never_installed() -> None:
    project = tomllib.loads(
        (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    )["project"]
    done = subprocess.run(
        [sys.executable, "-m", "plugin", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"klarna-capture {project['version']}\n"
    # What a checkout reads when the package is not installed: pyproject.toml itself.
    documentation = project.get("urls", {}).get("Documentation")
    assert about._from_pyproject() == (project["version"], documentation)
    assert about._from_pyproject() == (about.VERSION, about.DOCS_URL)


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


def refused_arguments(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The last line `klarna-capture ARGS` prints, refusing its arguments before doing anything."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


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


def test_unknown_variables_are_warned_about_with_the_closest_name(env: dict[str, str]) -> None:
    done = run_cli({**env, "KLARNA_CAPTURE_WORKER": "8", "KLARNA_CAPTURE_ZZZ": "1"}, "shop", "list")
    assert done.stderr.splitlines()[:2] == [
        "klarna-capture: 'KLARNA_CAPTURE_WORKER' is not a setting and is ignored; did you mean "
        "KLARNA_CAPTURE_WORKERS?",
        "klarna-capture: 'KLARNA_CAPTURE_ZZZ' is not a setting and is ignored",
    ]
    # Known names, KLARNA_CAPTURE_TEST_POSTGRES_URL among them, are not.
    quiet = run_cli({**env, "KLARNA_CAPTURE_TEST_POSTGRES_URL": "postgresql://x"}, "shop", "list")
    assert "is not a setting" not in quiet.stderr


def every_command(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Each command of the CLI, with its words, down to the leaves."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_command(sub, (*path, name))


def test_every_command_says_what_it_does_and_shows_its_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = list(every_command(cli.build_parser()))
    assert len(commands) > 20
    for words, parser in commands:
        with pytest.raises(SystemExit) as exited:
            cli.main([*words, "--help"])
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert parser.description, words
        assert " ".join(parser.description.split()) in text, words
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"(default: {action.default})" in text, (words, action.dest)
    serve_help = " ".join(run_cli(os.environ.copy(), "serve", "--help").stdout.split())
    assert "--port PORT the port to listen on (0: any free one) (default: 8000)" in serve_help
    add_help = " ".join(run_cli(os.environ.copy(), "shop", "add", "--help").stdout.split())
    assert "required unless run at a terminal" in add_help


def test_lists_have_a_header_row_and_json(env: dict[str, str]) -> None:
    assert run_cli(env, "shop", "list").stdout == ""
    assert run_cli(env, "shop", "list", "--json").stdout == "[]\n"
    shop = add_shop(env)
    header, line = run_cli(env, "shop", "list").stdout.splitlines()
    assert header.split() == ["SHOP_ID", "PLATFORM", "KLARNA", "STATE", "CREATED", "NAME"]
    assert line.split()[:4] == [shop["shop_id"], "standard", "eu/playground", "enabled"]
    assert line.endswith("  Corner shop")
    [listed] = msgspec.json.decode(run_cli(env, "shop", "list", "--json").stdout)
    assert listed["shop_id"] == shop["shop_id"]
    assert listed["name"] == "Corner shop"
    assert run_cli(env, "compliance", "list", "--json").stdout == "[]\n"


@pytest.mark.parametrize(
    "command", [("jobs", "list", "--limit"), ("compliance", "list", "--limit")]
)
@pytest.mark.parametrize("limit", ["-1", "0", "10001", "many"])
def test_a_limit_must_be_a_positive_whole_number(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...], limit: str
) -> None:
    assert refused_arguments(capsys, *command, limit).endswith(
        "the limit must be a whole number from 1 to 10000"
    )


def test_shop_remove_says_what_it_deletes_and_asks_first(env: dict[str, str]) -> None:
    shop = add_shop(env)
    said = (
        f"Removing shop {shop['shop_id']} (Corner shop, standard) deletes it with its Klarna "
        "credentials, webhook secrets, deliveries, jobs, capture records"
    )
    # Not at a terminal, nothing is removed without --yes.
    piped = run_cli(env, "shop", "remove", shop["shop_id"], stdin="yes\n", check=False)
    assert piped.returncode == 2
    assert said in piped.stderr
    assert "nothing removed: give --yes to remove without asking" in piped.stderr
    assert listed_shops(env) == [shop["shop_id"]]

    # At a terminal, it asks; anything but yes keeps the shop.
    for answer, code in (("n\n", 1), ("\n", 1), ("yes\n", 0)):
        done = at_a_terminal(env, answer, "shop", "remove", shop["shop_id"])
        assert done.returncode == code, done.stderr
        assert said in done.stderr
        assert f"Remove shop {shop['shop_id']}? [y/N]" in done.stderr
    assert listed_shops(env) == []
    assert done.stdout == f"shop {shop['shop_id']} removed, with everything stored for it\n"


def at_a_terminal(env: dict[str, str], typed: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`klarna-capture ARGS` with a terminal as standard input, on which `typed` is typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, typed.encode())
        return subprocess.run(
            [sys.executable, "-m", "plugin", *args],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)


def test_a_finished_job_has_nothing_to_retry(env: dict[str, str]) -> None:
    shop = add_shop(env)

    async def a_finished_job() -> int:
        settings = ensure_secret_keys(load_settings(env))[0]
        async with open_service(settings) as service:
            await service.store.record_delivery(
                shop["shop_id"],
                "msg_1",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id="1001-F1",
                rejected=None,
                now=time.time(),
            )
            job = await service.store.claim_job("test", 60, time.time())
            assert job is not None
            assert await service.store.finish_job(job.id, "test", time.time())
            return job.id

    job_id = anyio.run(a_finished_job)
    done = run_cli(env, "jobs", "retry", str(job_id), check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"klarna-capture: job {job_id} is done: there is nothing to retry"
    )
    [job] = msgspec.json.decode(run_cli(env, "jobs", "list", "--json").stdout)
    assert (job["job_id"], job["state"]) == (job_id, "done")


def test_shop_show_lists_the_options_of_the_shops_platform(env: dict[str, str]) -> None:
    common = {"capture_mode", "send_tracking", "trigger_send_out", "description_template"}
    standard = add_shop(env)["shop_id"]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", standard).stdout)["options"]
    assert shown == {
        "capture_mode": "each",
        "send_tracking": True,
        "trigger_send_out": False,
        "description_template": None,
    }
    woo = add_woocommerce_shop(
        env, "--site-url", "https://shop.example", "--consumer-key", WOO_KEY
    ).stdout.split()[1]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", woo).stdout)["options"]
    assert set(shown) == common | {"capture_statuses"}
    assert shown["capture_statuses"] == ["completed"]


def test_the_cli_asks_the_registry_and_imports_no_platform_package() -> None:
    allowed = {"plugin.platforms", "plugin.platforms.registry", "plugin.platforms.base"}
    package = Path(cli.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                imported |= {name for name in names if name.startswith("plugin.platforms")}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("plugin.platforms")}
    assert imported, "the shop commands ask the registry"
    within = tuple(f"{name}." for name in allowed - {"plugin.platforms"})
    assert {
        name for name in imported if name not in allowed and not name.startswith(within)
    } == set()
