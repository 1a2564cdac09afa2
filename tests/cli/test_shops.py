"""`klarna-capture shop ...`, admin-link: shops added (standard and WooCommerce), listed, shown,
rotated and removed, their secrets never shown or stored in clear."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.from_thread
import msgspec
import pytest

from plugin import signatures
from plugin.config import ensure_secret_keys, load_settings
from plugin.platforms.woocommerce.api_key import ApiKey, decode_api_key
from plugin.service import open_service
from tests.cli.support import (
    WOO_KEY,
    WOO_SECRET,
    add_shop,
    add_woocommerce_shop,
    listed_shops,
    refused_shop_add,
)
from tests.helpers import run_cli


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


def test_shop_add_sets_the_order_life_options_within_their_bounds(env: dict[str, str]) -> None:
    shop = add_shop(env, "--no-release-remaining", "--no-keep-alive", "--keep-alive-days", "30")
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop["shop_id"]).stdout)
    options = shown["options"]
    assert (options["release_remaining"], options["keep_alive"], options["keep_alive_days"]) == (
        False,
        False,
        30,
    )
    other = add_shop(env, "--keep-alive-days", "1", "--release-remaining")
    options = msgspec.json.decode(run_cli(env, "shop", "show", other["shop_id"]).stdout)["options"]
    assert (options["release_remaining"], options["keep_alive"], options["keep_alive_days"]) == (
        True,
        True,
        1,
    )

    for days in ("0", "31", "2.5", "-1", "x", "1" * 100):
        done = refused_shop_add(env, "--keep-alive-days", days)
        assert done.returncode == 2, days
        assert done.stderr.startswith(
            "klarna-capture: --keep-alive-days: give a whole number of days from 1 to 30"
        ), done.stderr
    assert sorted(listed_shops(env)) == sorted([shop["shop_id"], other["shop_id"]])


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

    async def stored() -> ApiKey:
        settings, _ = ensure_secret_keys(load_settings(env))
        async with open_service(settings) as service:
            shop = await service.store.get_shop(shop_id)
            assert shop is not None
            token = service.shops.platform_token(shop)
            assert token is not None
            return decode_api_key(token)

    assert anyio.run(stored) == ApiKey(consumer_key=WOO_KEY, consumer_secret=WOO_SECRET)
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


def test_shop_show_lists_the_options_of_the_shops_platform(env: dict[str, str]) -> None:
    common = {
        "capture_mode",
        "send_tracking",
        "trigger_send_out",
        "description_template",
        "release_remaining",
        "keep_alive",
        "keep_alive_days",
        "failure_alerts",
        "time_zone",
        "locale",
    }
    standard = add_shop(env)["shop_id"]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", standard).stdout)["options"]
    assert shown == {
        "capture_mode": "each",
        "send_tracking": True,
        "trigger_send_out": False,
        "description_template": None,
        "release_remaining": True,
        "keep_alive": True,
        "keep_alive_days": 3,
        "failure_alerts": False,
        "time_zone": "UTC",
        "locale": "en",
    }
    woo = add_woocommerce_shop(
        env, "--site-url", "https://shop.example", "--consumer-key", WOO_KEY
    ).stdout.split()[1]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", woo).stdout)["options"]
    assert set(shown) == common | {"capture_statuses"}
    assert shown["capture_statuses"] == ["completed"]


def test_a_shops_email_is_set_at_add_shown_and_changed(env: dict[str, str]) -> None:
    shop_id = add_shop(env, "--email", " Ann@Example.com", "--failure-alerts")["shop_id"]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)
    assert (shown["email"], shown["options"]["failure_alerts"]) == ("ann@example.com", True)

    changed = run_cli(env, "shop", "set", shop_id, "--email", "bob@example.com")
    assert "email bob@example.com, failure alerts on" in changed.stdout
    run_cli(env, "shop", "set", shop_id, "--no-failure-alerts")
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)
    assert (shown["email"], shown["options"]["failure_alerts"]) == ("bob@example.com", False)
    # Alerts need an address: removing it stops them.
    run_cli(env, "shop", "set", shop_id, "--failure-alerts")
    run_cli(env, "shop", "set", shop_id, "--email", "")
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)
    assert (shown["email"], shown["options"]["failure_alerts"]) == (None, False)

    refused = run_cli(env, "shop", "set", shop_id, "--email", "ann@", check=False)
    assert refused.returncode == 2
    assert "--email: Enter one email address" in refused.stderr
    refused = run_cli(env, "shop", "set", shop_id, "--failure-alerts", check=False)
    assert refused.returncode == 2
    assert "the shop has no address" in refused.stderr


def test_shop_add_refuses_an_email_that_is_no_address_and_alerts_without_one(
    env: dict[str, str],
) -> None:
    refused = refused_shop_add(env, "--email", "ann@example.com, eve@example.com")
    assert refused.returncode != 0
    assert "--email: Enter one email address" in refused.stderr
    refused = refused_shop_add(env, "--failure-alerts")
    assert refused.returncode != 0
    assert "--failure-alerts: give the --email they go to" in refused.stderr
    assert listed_shops(env) == []


def _shopify_shop(env: dict[str, str]) -> str:
    """A Shopify shop as installing the app leaves it (`shop add` makes none)."""

    async def create() -> str:
        settings, _ = ensure_secret_keys(load_settings(env))
        async with open_service(settings) as service:
            shop, _ = await service.shops.create(
                platform="shopify",
                name="Fika",
                klarna_region="eu",
                klarna_environment="playground",
                klarna_username="",
                klarna_password="",
                shop_domain="fika.myshopify.com",
            )
            return shop.id

    return anyio.run(create)


def test_shop_set_chooses_who_captures_a_shopify_shop_and_shop_show_says_it(
    env: dict[str, str],
) -> None:
    shop_id = _shopify_shop(env)
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)["options"]
    assert (shown["payment_flow"], shown["payment_gateways"], shown["single_capture"]) == (
        "klarna",
        ["klarna", "shopify_payments"],
        "last",
    )
    changed = run_cli(
        env,
        "shop",
        "set",
        shop_id,
        "--payment-flow",
        "shopify",
        "--payment-gateways",
        " Klarna , klarna_payments,klarna",
        "--single-capture",
        "first",
    )
    assert "payments captured by shopify; gateways klarna, klarna_payments" in changed.stdout
    assert "captured at its first shipment" in changed.stdout
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)["options"]
    assert (shown["payment_flow"], shown["payment_gateways"], shown["single_capture"]) == (
        "shopify",
        ["klarna", "klarna_payments"],
        "first",
    )
    # An empty list restores the known gateways; other options stay as they were.
    run_cli(env, "shop", "set", shop_id, "--payment-gateways", "")
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)["options"]
    assert (shown["payment_flow"], shown["payment_gateways"]) == (
        "shopify",
        ["klarna", "shopify_payments"],
    )

    for wrong, said in (
        (("--payment-flow", "stripe"), "invalid choice"),
        (("--single-capture", "middle"), "invalid choice"),
        (("--payment-gateways", "a,b,c,d,e,f"), "at most 5 gateway names"),
        (("--payment-gateways", "klarna\x1b[31m"), "all printable"),
        (("--payment-gateways", "k" * 200 + "," + "a" * 200), "at most 300 characters"),
    ):
        refused = run_cli(env, "shop", "set", shop_id, *wrong, check=False)
        assert refused.returncode == 2, wrong
        assert said in refused.stderr, (wrong, refused.stderr)
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)["options"]
    assert shown["single_capture"] == "first"


def test_the_payment_options_are_for_shopify_shops_only(env: dict[str, str]) -> None:
    standard = add_shop(env)["shop_id"]
    refused = run_cli(env, "shop", "set", standard, "--payment-flow", "shopify", check=False)
    assert refused.returncode == 2
    assert "--payment-flow is for Shopify shops" in refused.stderr
    shown = msgspec.json.decode(run_cli(env, "shop", "show", standard).stdout)["options"]
    assert "payment_flow" not in shown
