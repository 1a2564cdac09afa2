from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import pytest

from plugin.config import Settings
from plugin.store.records import Shop
from tests.postgres_cluster import fresh_database
from tests.web.support import Browser, Site, page_settings, running


@pytest.fixture
def settings(tmp_path: Path, klarna_url: str) -> Settings:
    return page_settings(tmp_path, klarna_url)


@pytest.fixture
def site(settings: Settings) -> Iterator[Site]:
    with running(settings) as site:
        yield site


@pytest.fixture
def shop(site: Site) -> tuple[Shop, str]:
    """A shop with the sandbox's credentials, and its webhook secret."""
    return site.create_shop()


@pytest.fixture
def browser(site: Site, shop: tuple[Shop, str]) -> Browser:
    """The shop's merchant, signed in."""
    return site.sign_in(shop[0].id)


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings that put the service on each store: its SQLite file, or a PostgreSQL database
    of this test's own."""
    if request.param == "sqlite":
        yield {}
        return
    server: str = request.getfixturevalue("postgres_url")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fresh_database(server)) as url,
    ):
        yield {"KLARNA_CAPTURE_DATABASE_URL": url}
