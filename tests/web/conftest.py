from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.config import Settings
from plugin.store.records import Shop
from tests.web.support import Browser, Site, page_settings, running


@pytest.fixture
def settings(tmp_path: Path, klarna_url: str, settings_env: dict[str, str]) -> Settings:
    """The pages' settings, with the module's `settings_env` (tests/conftest.py) added."""
    return page_settings(tmp_path, klarna_url, extra=settings_env)


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
