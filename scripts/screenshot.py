"""Makes the listing screenshots under manifests/screenshots/: the settings, activity, shipment and
order pages of a shop filled with example values (an example domain, a made-up Klarna username)
and the demo's seeded shipments (scripts/demo_keep.py: a capture, a partial one, a refund, a
failure with its advice), so that the pictures show no sandbox credentials and no loopback URL.

The service and a Klarna sandbox that accepts the made-up credentials run on loopback;
KLARNA_CAPTURE_PUBLIC_URL is the example domain, which is what the pages show in their links.
Before each picture is taken the page's text is checked for loopback addresses and the sandboxes'
credentials: a leak stops the script.

    scripts/screenshot [--output-dir DIR]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
from demo_keep import seed
from playwright.sync_api import Page, sync_playwright
from support import Process

from plugin.sandbox.klarna import create_app
from plugin.sandbox.server import serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "manifests" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}

# What the picture shows: an example domain (RFC 2606) and made-up account values.
PUBLIC_URL = "https://klarna-capture.example.com"
SHOP_NAME = "Corner Shop"
EMAIL = "orders@corner-shop.example.com"
KLARNA_USERNAME = "PK41296_3f7c9e2a8b15"
KLARNA_PASSWORD = "example-password-not-shown"  # noqa: S105 - made up, never on the page
DESCRIPTION = "Parcel {fulfillment_name}"
SECRET_KEY = "screenshot-secret-key-0123456789"  # noqa: S105 - a throwaway store's key

# Never on the page: loopback and private addresses, and the sandboxes' own credentials.
LEAKS = re.compile(r"127\.\d+\.\d+\.\d+|localhost|\[::1\]|0\.0\.0\.0|PK_SANDBOX|sandbox", re.I)


def service_env(data_dir: Path, klarna_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env.update(
        KLARNA_CAPTURE_DATA_DIR=str(data_dir),
        KLARNA_CAPTURE_SECRET_KEY=SECRET_KEY,
        KLARNA_CAPTURE_PUBLIC_URL=PUBLIC_URL,
        KLARNA_CAPTURE_KLARNA_URL=klarna_url,
        KLARNA_CAPTURE_POLL_MS="50",
        KLARNA_CAPTURE_METRICS_ADDRESS="off",
        KLARNA_CAPTURE_LOG_LEVEL="WARNING",
    )
    return env


def cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    command = [sys.executable, "-m", "plugin", *args]
    done = subprocess.run(  # noqa: S603 - our own command
        command, input=stdin, capture_output=True, text=True, env=env, check=True, timeout=60
    )
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=OUTPUT, help="where the PNGs go (made if missing)"
    )
    args = parser.parse_args()
    # A Klarna sandbox that accepts the made-up credentials, so that the pages show those.
    sandbox = create_app(credentials={KLARNA_USERNAME: KLARNA_PASSWORD})
    with (
        tempfile.TemporaryDirectory(prefix="klarna-capture-screenshot-") as folder,
        serve_in_thread(sandbox) as klarna_url,
    ):
        env = service_env(Path(folder), klarna_url)
        shop = msgspec.json.decode(
            cli(
                env,
                *("shop", "add", "--name", SHOP_NAME, "--email", EMAIL),
                *("--klarna-region", "eu", "--klarna-environment", "live"),
                *("--klarna-username", KLARNA_USERNAME, "--klarna-password-stdin"),
                *("--description-template", DESCRIPTION, "--json"),
                stdin=KLARNA_PASSWORD + "\n",
            )
        )
        log = Path(folder) / "service.log"
        server = Process(
            "serve", [sys.executable, "-m", "plugin", "serve", "--port", "0"], env, log
        )
        try:
            server.wait_output(" listening on ")  # "... listening on URL; public URL ..."
            said = log.read_text(errors="replace").split(" listening on ")[1]
            local = said.split(";")[0].split(",")[0]
            seed(env, klarna_url, local, log, shop, with_waiting=False)
            link = cli(env, "admin-link", shop["shop_id"]).strip()
            take(link.replace(PUBLIC_URL, local), local, shop["shop_id"], args.output_dir)
        finally:
            server.stop()
    print(f"wrote {', '.join(PAGES)} in {args.output_dir}")
    return 0


# The pictures: each page's file name and its path under /admin/SHOP_ID.
PAGES = {
    "settings.png": "/settings",
    "activity.png": "/activity",
    "shipment.png": "/shipments/1001-F1",
    "order.png": "/orders/1001",
}


def take(link: str, local: str, shop_id: str, output: Path) -> None:
    """Sign in with `link`, save the settings once (for the "Settings saved." notice), then take
    each page whole, once it shows nothing it must not."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()  # type: ignore[arg-type]
            page.goto(link)
            # The link's page signs in with its button: opening a link uses nothing.
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Save settings").click()
            page.locator("p.notice[role=status]").wait_for()
            output.mkdir(parents=True, exist_ok=True)
            for name, path in PAGES.items():
                if path != "/settings":
                    page.goto(f"{local}/admin/{shop_id}{path}")
                check(page, shows_public_url=path == "/settings")
                page.screenshot(path=str(output / name), full_page=True)
        finally:
            browser.close()


def check(page: Page, *, shows_public_url: bool) -> None:
    """Stop unless the page shows no loopback address, no sandbox credential and never the
    password; the settings page must show the example public URL (its webhook URL)."""
    shown = page.inner_text("body")
    leaked = LEAKS.findall(shown)
    if (
        leaked
        or KLARNA_PASSWORD in page.content()
        or (shows_public_url and PUBLIC_URL not in shown)
    ):
        raise SystemExit(f"{page.url.split('/admin/')[-1]} shows what a listing must not: {leaked}")


if __name__ == "__main__":
    sys.exit(main())
