"""The demos a newcomer runs first keep working: each exits 0 only when its capture, and then its
refund, appeared."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("demo.py", "refund read back from Klarna (refunded 1200)"),
        ("demo_shopify.py", '"klarna_capture.order_status": "partially_refunded"'),
    ],
)
def test_the_demo_captures(script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout
