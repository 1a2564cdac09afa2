"""What the BigCommerce tests share: the fake BigCommerce over real HTTP, one per module, reset for
each test, and the service's settings pointing at it."""

from collections.abc import Iterator

import pytest

from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
)
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


@pytest.fixture
def settings_env(
    bigcommerce_server: tuple[BigCommerceSandbox, str], bigcommerce: BigCommerceSandbox
) -> dict[str, str]:
    return {
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "KLARNA_CAPTURE_BIGCOMMERCE_API_URL": bigcommerce_server[1],
        "KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": bigcommerce_server[1],
    }
