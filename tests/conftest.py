"""The fixtures tests share: the sandboxes over real HTTP, a PostgreSQL server, and a service
(its settings, and the real app under uvicorn) that a test module adjusts through `settings_env`."""

import os
from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from plugin.app import create_app as create_service_app
from plugin.config import Settings, load_settings
from plugin.klarna import RetryPolicy
from plugin.sandbox.klarna import KlarnaSandbox, create_app
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import ShopifySandbox
from plugin.sandbox.shopify import create_app as create_shopify_app
from plugin.worker import Backoff
from tests import postgres_cluster
from tests.helpers import ALLOW_LOOPBACK, StatusInbox

# Hypothesis's settings for the whole suite, here and on CI (where Hypothesis would otherwise load
# its own "ci" profile, which derandomizes). No deadline per example, and no health check on how
# fast examples come: the properties that drive a sandbox over HTTP or a store take what the shared
# machine gives them, and either would be a timed assertion. Random, not derandomized: each run
# tries new examples, and a failure prints the blob that reproduces it. The example counts stay
# each property's own @settings, chosen for what it looks for; 100 where it sets none.
hypothesis_settings.register_profile(
    "klarna-capture",
    max_examples=100,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "klarna-capture"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def klarna_server() -> Iterator[tuple[KlarnaSandbox, str]]:
    """One Klarna sandbox over real HTTP for the session: (its state, its base URL)."""
    sandbox = KlarnaSandbox()
    with serve_in_thread(create_app(sandbox)) as url:
        yield sandbox, url


@pytest.fixture
def klarna_sandbox(klarna_server: tuple[KlarnaSandbox, str]) -> Iterator[KlarnaSandbox]:
    sandbox = klarna_server[0]
    sandbox.reset()
    sandbox.clear_faults()
    clock = sandbox.clock
    yield sandbox
    sandbox.clock = clock
    sandbox.clear_faults()  # tests on the session's server without this fixture get none


@pytest.fixture
def klarna_url(klarna_server: tuple[KlarnaSandbox, str], klarna_sandbox: KlarnaSandbox) -> str:
    return klarna_server[1]


@pytest.fixture(scope="session")
def shopify_server() -> Iterator[tuple[ShopifySandbox, str]]:
    """One fake Shopify over real HTTP for the session: (its state, its base URL)."""
    sandbox = ShopifySandbox()
    with serve_in_thread(create_shopify_app(sandbox)) as url:
        yield sandbox, url


@pytest.fixture
def shopify_sandbox(shopify_server: tuple[ShopifySandbox, str]) -> Iterator[ShopifySandbox]:
    sandbox = shopify_server[0]
    sandbox.reset()
    yield sandbox
    sandbox.clear_faults()


@pytest.fixture
def shopify_admin_url(
    shopify_server: tuple[ShopifySandbox, str], shopify_sandbox: ShopifySandbox
) -> str:
    """KLARNA_CAPTURE_SHOPIFY_ADMIN_URL for the fake: each shop's Admin API under /shops/."""
    return shopify_server[1] + "/shops/{shop}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session, as a superuser URL: KLARNA_CAPTURE_TEST_POSTGRES_URL
    (scripts/test starts one), else a throwaway cluster of our own. Never skipped: without
    PostgreSQL installed the tests that need it fail and say so."""
    url = os.environ.get("KLARNA_CAPTURE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        postgres_cluster.find_program("initdb")
    except postgres_cluster.PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with postgres_cluster.throwaway() as (_, server_url):
        yield server_url


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings that put the service on each store: its SQLite file (none set), or a
    PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        yield {}
        return
    server: str = request.getfixturevalue("postgres_url")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(postgres_cluster.fresh_database(server)) as url,
    ):
        yield {"KLARNA_CAPTURE_DATABASE_URL": url}


@pytest.fixture
def settings_env() -> dict[str, str]:
    """What a module's service is configured with beyond what `settings` sets itself: loopback
    allowed for merchant-entered URLs. A module overrides this fixture (with its storefront app's
    variables, say) rather than `settings`."""
    return dict(ALLOW_LOOPBACK)


@pytest.fixture
def settings(tmp_path: Path, klarna_url: str, settings_env: dict[str, str]) -> Settings:
    """A service's settings: its SQLite file in the test's folder, the Klarna sandbox, four
    workers, and the module's `settings_env`."""
    return load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "a-test-secret-key-of-some-length",
            "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
            "KLARNA_CAPTURE_WORKERS": "4",
            **settings_env,
        }
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn with `settings`, its retries and polls short so that a test
    waits little: its base URL."""
    app = create_service_app(
        settings,
        backoff=Backoff(base_seconds=0.05, max_seconds=0.2, attempts=4),
        klarna_retry=RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05),
        storefront_retry=RetryPolicy(attempts=2, backoff_seconds=0.01, max_backoff_seconds=0.05),
        poll_seconds=0.05,
    )
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="session")
def status_server() -> Iterator[tuple[StatusInbox, str]]:
    """A shop's status URL over HTTP for the session: (what it received, its URL)."""
    inbox = StatusInbox()
    with serve_in_thread(inbox.app) as url:
        yield inbox, f"{url}/status"


@pytest.fixture
def inbox(status_server: tuple[StatusInbox, str]) -> StatusInbox:
    """The status URL's inbox, emptied for the test."""
    status_server[0].received.clear()
    return status_server[0]
