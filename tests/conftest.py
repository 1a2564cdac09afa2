from collections.abc import Iterator

import pytest

from plugin.sandbox.klarna import KlarnaSandbox, create_app
from plugin.sandbox.server import serve_in_thread


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


@pytest.fixture
def klarna_url(klarna_server: tuple[KlarnaSandbox, str], klarna_sandbox: KlarnaSandbox) -> str:
    return klarna_server[1]
