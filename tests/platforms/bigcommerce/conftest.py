"""What the BigCommerce tests share: the fake BigCommerce over real HTTP, one per module, reset for
each test."""

from collections.abc import Iterator

import pytest

from plugin.sandbox.bigcommerce import BigCommerceSandbox
from plugin.sandbox.bigcommerce import create_app as create_bigcommerce_app
from plugin.sandbox.server import serve_in_thread


@pytest.fixture(scope="module")
def bigcommerce_server() -> Iterator[tuple[BigCommerceSandbox, str]]:
    sandbox = BigCommerceSandbox()
    with serve_in_thread(create_bigcommerce_app(sandbox)) as url:
        yield sandbox, url


@pytest.fixture
def bigcommerce(
    bigcommerce_server: tuple[BigCommerceSandbox, str],
) -> Iterator[BigCommerceSandbox]:
    sandbox = bigcommerce_server[0]
    sandbox.reset()
    yield sandbox
    sandbox.clear_faults()
