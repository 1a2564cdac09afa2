"""The listing screenshots are made by scripts/screenshot.py with example values and the demo's
seeded shipments: its inputs hold no loopback address and no sandbox credential, and the script,
run in Debian's Chromium, checks each page it takes for them (so a leak on a page stops it)."""

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest

from plugin.sandbox import bigcommerce, klarna, shopify, woocommerce

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot.py"
SANDBOX_VALUES = {
    klarna.DEFAULT_USERNAME,
    klarna.DEFAULT_PASSWORD,
    shopify.DEFAULT_CLIENT_ID,
    shopify.DEFAULT_CLIENT_SECRET,
    bigcommerce.DEFAULT_CLIENT_ID,
    bigcommerce.DEFAULT_CLIENT_SECRET,
    woocommerce.DEFAULT_CONSUMER_KEY,
    woocommerce.DEFAULT_CONSUMER_SECRET,
}


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("screenshot", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))  # as when run: its folder's modules import
        spec.loader.exec_module(module)
    return module


def test_the_screenshot_is_filled_with_example_values_only() -> None:
    made = script()
    host = urlsplit(made.PUBLIC_URL).hostname
    assert host is not None
    assert host.endswith(".example.com")  # a domain reserved for examples (RFC 2606)
    shown = (made.PUBLIC_URL, made.SHOP_NAME, made.KLARNA_USERNAME, made.DESCRIPTION)
    for value in shown:
        assert not made.LEAKS.search(value), value
        assert not any(secret in value for secret in SANDBOX_VALUES), value
    assert made.KLARNA_PASSWORD not in SANDBOX_VALUES
    # The page check catches what the listing must not show.
    for leak in ("http://127.0.0.1:8000/webhooks", "localhost", "PK_SANDBOX", "[::1]"):
        assert made.LEAKS.search(leak), leak


def test_the_script_takes_each_page(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    taken = sorted(path.name for path in tmp_path.iterdir())
    assert taken == ["activity.png", "order.png", "settings.png", "shipment.png"]
    for name in taken:
        header = (tmp_path / name).read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", header[16:24])
        assert width == 1280
        assert height >= 900, name
        if name in ("activity.png", "settings.png"):
            assert height > 900, name  # the whole page, not the window
