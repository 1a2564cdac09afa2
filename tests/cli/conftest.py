"""The CLI tests' environment: a data directory of their own and a public URL."""

import os
from pathlib import Path

import pytest

from tests.helpers import ALLOW_LOOPBACK


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_PUBLIC_URL": "https://capture.example",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
        **ALLOW_LOOPBACK,
    }
