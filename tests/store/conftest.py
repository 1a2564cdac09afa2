from collections.abc import AsyncIterator

import pytest

from tests.postgres_cluster import fresh_database


@pytest.fixture
async def postgres_database(postgres_url: str) -> AsyncIterator[str]:
    """The URL of an empty database of this test's own, dropped afterwards."""
    async with fresh_database(postgres_url) as url:
        yield url
