"""Makes the listing screenshot, manifests/screenshots/settings.png: the settings page of a shop
filled with example values (an example domain, a made-up Klarna username), so that the picture
shows no sandbox credentials and no loopback URL.

The service runs on loopback as usual; KLARNA_CAPTURE_PUBLIC_URL is the example domain, which is
what the page shows in its webhook URL. Before the picture is taken the page's text is checked
for loopback addresses and the sandboxes' credentials: a leak stops the script.

    scripts/screenshot [--output PATH]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "manifests" / "screenshots" / "settings.png"
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}

# What the picture shows: an example domain (RFC 2606) and made-up account values.
PUBLIC_URL = "https://klarna-capture.example.com"
SHOP_NAME = "Corner Shop"
KLARNA_USERNAME = "PK41296_3f7c9e2a8b15"
KLARNA_PASSWORD = "example-password-not-shown"  # noqa: S105 - made up, never on the page
DESCRIPTION = "Parcel {fulfillment_name}"
SECRET_KEY = "screenshot-secret-key-0123456789"  # noqa: S105 - a throwaway store's key

# Never on the page: loopback and private addresses, and the sandboxes' own credentials.
LEAKS = re.compile(r"127\.\d+\.\d+\.\d+|localhost|\[::1\]|0\.0\.0\.0|PK_SANDBOX|sandbox", re.I)


def service_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env.update(
        KLARNA_CAPTURE_DATA_DIR=str(data_dir),
        KLARNA_CAPTURE_SECRET_KEY=SECRET_KEY,
        KLARNA_CAPTURE_PUBLIC_URL=PUBLIC_URL,
        KLARNA_CAPTURE_WORKERS="0",
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
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the PNG goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klarna-capture-screenshot-") as folder:
        env = service_env(Path(folder))
        shop = msgspec.json.decode(
            cli(
                env,
                "shop",
                "add",
                "--name",
                SHOP_NAME,
                "--klarna-region",
                "eu",
                "--klarna-environment",
                "live",
                "--klarna-username",
                KLARNA_USERNAME,
                "--klarna-password-stdin",
                "--description-template",
                DESCRIPTION,
                "--json",
                stdin=KLARNA_PASSWORD + "\n",
            )
        )
        link = cli(env, "admin-link", shop["shop_id"]).strip()
        with subprocess.Popen(
            [sys.executable, "-m", "plugin", "serve", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as server:
            assert server.stderr is not None
            said = server.stderr.readline()  # once it listens: "... listening on URL; ..."
            try:
                if " listening on " not in said:
                    print(f"serve did not start: {said}", file=sys.stderr)
                    return 1
                local = said.split(" listening on ")[1].split(";")[0].split(",")[0]
                take(link.replace(PUBLIC_URL, local), args.output)
            finally:
                server.terminate()
                server.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


def take(link: str, output: Path) -> None:
    """Sign in with `link`, save the settings once (for the "Settings saved." notice), check the
    page shows nothing it must not, and take the full page."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()  # type: ignore[arg-type]
            page.goto(link)
            page.get_by_role("button", name="Save settings").click()
            page.locator("p.notice[role=status]").wait_for()
            shown = page.inner_text("body")
            leaked = LEAKS.findall(shown)
            if leaked or PUBLIC_URL not in shown or KLARNA_PASSWORD in page.content():
                raise SystemExit(f"the page shows what a listing must not: {leaked}")
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
