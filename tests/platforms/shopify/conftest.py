"""What the Shopify app's page tests share: the real app with the Shopify app configured as the
fake Shopify knows it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.support import Site, running, shopify_settings


@pytest.fixture
def site(tmp_path: Path, klarna_url: str, shopify_admin_url: str) -> Iterator[Site]:
    with running(shopify_settings(tmp_path, klarna_url, shopify_admin_url)) as site:
        yield site
