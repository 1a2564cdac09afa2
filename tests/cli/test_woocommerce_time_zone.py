"""`klarna-capture shop add --platform woocommerce` starts the shop in the time zone the site's
WordPress names (its REST index's `timezone_string`, read over HTTP from the WooCommerce sandbox),
and in UTC when it names only an offset, a zone this machine does not know, or does not answer:
the shop is added either way."""

import asyncio
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from plugin.platforms.woocommerce.site import INDEX_SECONDS
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.woocommerce import FaultSettings, WooCommerceSandbox
from plugin.sandbox.woocommerce import create_app as create_woocommerce_app
from tests.cli.support import WOO_KEY, WOO_SECRET, add_woocommerce_shop
from tests.helpers import free_port, run_cli

SITE = "tomato-farm"


@pytest.fixture(scope="module")
def woocommerce_server() -> Iterator[WooCommerceSandbox]:
    sandbox = WooCommerceSandbox()
    with serve_in_thread(create_woocommerce_app(sandbox)) as url:
        sandbox.base_url = url
        yield sandbox


@pytest.fixture
def woo(woocommerce_server: WooCommerceSandbox) -> Iterator[WooCommerceSandbox]:
    woocommerce_server.reset()
    woocommerce_server.add_site(SITE)
    yield woocommerce_server
    woocommerce_server.clear_faults()


def added(env: dict[str, str], site_url: str) -> tuple[str, str]:
    """Add the shop of `site_url`; (its stored time zone, what `shop add` printed)."""
    done = add_woocommerce_shop(env, "--site-url", site_url, "--consumer-key", WOO_KEY)
    shop_id = done.stdout.split()[1]
    shown = msgspec.json.decode(run_cli(env, "shop", "show", shop_id).stdout)
    zone = shown["options"]["time_zone"]
    assert isinstance(zone, str)
    return zone, done.stdout


def index_reads(woo: WooCommerceSandbox) -> list[int]:
    return [r.status for r in woo.requests if r.path == f"/{SITE}/wp-json/"]


def test_a_site_set_to_a_city_starts_in_its_time_zone(
    env: dict[str, str], woo: WooCommerceSandbox
) -> None:
    woo.set_time_zone(SITE, "Europe/Stockholm", 1.0)
    zone, printed = added(env, woo.site_url(SITE))
    assert zone == "Europe/Stockholm"
    assert "time zone:      Europe/Stockholm  (as the storefront names it;" in printed
    assert index_reads(woo) == [200]


@pytest.mark.parametrize(
    ("timezone_string", "gmt_offset"),
    [
        # An offset chosen instead of a city: UTC+1 is no zone (whose summer time?), not guessed.
        ("", 1.0),
        ("", 5.5),
        ("Mars/Olympus_Mons", 0.0),
        ("Europe/../../etc/passwd", 0.0),
        ("x" * 80, 0.0),
    ],
)
def test_a_site_that_names_no_zone_known_here_starts_in_utc(
    env: dict[str, str], woo: WooCommerceSandbox, timezone_string: str, gmt_offset: float
) -> None:
    woo.set_time_zone(SITE, timezone_string, gmt_offset)
    zone, printed = added(env, woo.site_url(SITE))
    assert zone == "UTC"
    assert "time zone:      UTC  (the storefront names none;" in printed


def test_a_site_that_fails_to_answer_is_added_in_utc(
    env: dict[str, str], woo: WooCommerceSandbox
) -> None:
    woo.set_time_zone(SITE, "Europe/Stockholm")
    woo.set_faults(FaultSettings(fail_next=1, fail_status=503))
    zone, _ = added(env, woo.site_url(SITE))
    assert zone == "UTC"
    assert index_reads(woo) == [503]


def test_an_unreachable_site_is_added_in_utc_and_its_secret_stays_out_of_the_output(
    env: dict[str, str],
) -> None:
    done = add_woocommerce_shop(
        {**env, "KLARNA_CAPTURE_LOG_LEVEL": "INFO"},
        "--site-url",
        f"http://127.0.0.1:{free_port()}/shop",
        "--consumer-key",
        WOO_KEY,
    )
    assert "time zone:      UTC" in done.stdout
    assert "woocommerce time zone not read" in done.stderr
    assert WOO_SECRET not in done.stdout + done.stderr


async def _html_index(request: Request) -> Response:
    # A site without pretty permalinks: /wp-json/ is a page of the theme, not the REST index.
    return HTMLResponse("<!doctype html><title>Tomato farm</title><p>Welcome</p>")


async def _trickling_index(request: Request) -> Response:
    async def one_byte_at_a_time() -> AsyncIterator[bytes]:
        for byte in b'{"timezone_string": "Europe/Stockholm"}':
            await asyncio.sleep(0.5)
            yield bytes([byte])

    return StreamingResponse(one_byte_at_a_time(), media_type="application/json")


@pytest.fixture(scope="module")
def odd_sites() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/html/wp-json/", _html_index),
            Route("/slow/wp-json/", _trickling_index),
        ]
    )
    with serve_in_thread(app) as url:
        yield url


def test_a_site_whose_index_is_a_page_not_json_is_added_in_utc(
    env: dict[str, str], odd_sites: str
) -> None:
    done = add_woocommerce_shop(
        {**env, "KLARNA_CAPTURE_LOG_LEVEL": "INFO"},
        "--site-url",
        f"{odd_sites}/html",
        "--consumer-key",
        WOO_KEY,
    )
    assert "time zone:      UTC" in done.stdout
    assert "not a WordPress REST API index" in done.stderr


def test_a_site_answering_a_byte_at_a_time_is_given_up_on_in_the_index_s_own_time(
    env: dict[str, str], odd_sites: str
) -> None:
    # Each byte comes within any read timeout; only a limit on the whole answer ends it, and the
    # index's own (shorter than every storefront call's) is the one that does.
    done = add_woocommerce_shop(
        {**env, "KLARNA_CAPTURE_LOG_LEVEL": "INFO"},
        "--site-url",
        f"{odd_sites}/slow",
        "--consumer-key",
        WOO_KEY,
    )
    assert "time zone:      UTC" in done.stdout
    assert f"no answer within {INDEX_SECONDS:g} s" in done.stderr
