"""The demos a newcomer runs first keep working: each exits 0 only when its capture, and then its
refund, appeared; `demo.py --keep` leaves a seeded shop of each platform up to sign in to until
Ctrl-C; and the demo modules share what they share through one module, not each other."""

import ast
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
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


class Output:
    """The lines a process prints, read by a thread of their own so that a wait for one is bounded
    (the kept demo prints nothing more until something happens)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self.said: list[str] = []
        self.stream = process.stdout
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.put(line)

    def close(self) -> None:
        """Once the process exited: its output read to the end, the pipe closed."""
        self.reader.join(timeout=30)
        self.stream.close()

    def until(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first line from now on that matches `pattern`; fails with all said so far."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line matched {pattern!r}:\n{''.join(self.said)}"
                ) from None
            self.said.append(line)
            if found := re.search(pattern, line):
                return found


def press_sign_in(merchant: httpx2.Client, link: str, service: str) -> httpx2.Response:
    """Open a sign-in link and press the Sign in button of the page it opens."""
    page = merchant.get(link)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    assert token is not None, page.text
    return merchant.post(
        f"{service}/admin/login",
        data={"csrf_token": found[1], "token": token[1]},
        headers={"origin": service},  # as a browser sends with a form
    )


def test_the_demo_modules_import_no_other_demo_module_but_the_entry_points() -> None:
    """What the demos share is in demo_support.py, which imports no demo; only demo.py imports
    another demo (demo_keep.py, the --keep it runs), so that no import goes round in a circle."""
    demos = {path.stem: path for path in SCRIPTS.glob("demo*.py")}
    imports: dict[str, set[str]] = {}
    for name, path in demos.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                found.add(node.module)
        imports[name] = found & set(demos)
    assert imports == {
        "demo": {"demo_keep", "demo_support"},
        "demo_keep": {"demo_support"},
        "demo_shopify": {"demo_support"},
        "demo_support": set(),
    }


@contextlib.contextmanager
def signed_in_with(link: str, service: str) -> Iterator[tuple[httpx2.Client, str]]:
    """A browser signed in with `link`, and the id of the shop it signed in to."""
    with httpx2.Client(follow_redirects=True, timeout=10) as merchant:
        settings = press_sign_in(merchant, link, service)
        assert settings.status_code == 200, settings.text
        yield merchant, settings.url.path.split("/")[2]


def test_the_kept_demo_signs_a_merchant_in_until_interrupted() -> None:
    """`demo.py --keep` seeds a shop of each platform with the states a merchant meets, prints a
    sign-in link per shop, keeps the pages up and mails sign-in links asked for at /admin/login
    to its own mail server; Ctrl-C (SIGINT) stops every process and removes the data dir."""
    demo = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "demo.py"), "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group: a failing test stops the demo's children too, not only the demo.
        start_new_session=True,
    )
    output = Output(demo)
    try:
        data_dir = Path(output.until(r"data dir \(deleted at the end\): (\S+)")[1])
        sandbox = output.until(r"Klarna sandbox on (\S+),")[1]
        link = output.until(r"sign-in link for Corner shop \(Standard Webhooks, .*: (\S+)")[1]
        shopify_link = output.until(r"sign-in link for \S+\.myshopify\.com \(Shopify, .*: (\S+)")[1]
        woocommerce_link = output.until(r"sign-in link for .* \(WooCommerce, .*: (\S+)")[1]
        bigcommerce_link = output.until(r"sign-in link for .* \(BigCommerce, .*: (\S+)")[1]
        login = output.until(r"login page: (\S+) \(enter (\S+)\)")
        output.until("works once, within 15 minutes.* mail server")
        output.until("^Ready:")
        service = login[1].removesuffix("/admin/login")
        assert data_dir.is_dir()

        with httpx2.Client(follow_redirects=True, timeout=10) as merchant:
            settings = press_sign_in(merchant, link, service)
            assert settings.status_code == 200
            shop_id = settings.url.path.split("/")[2]
            activity = merchant.get(f"{service}/admin/{shop_id}/activity")
            assert activity.status_code == 200
            for state in (
                "Captured",  # 1001, whole
                "€24.00",  # 1002, four tomatoes of ten
                "1001-R1",  # the refund of two tomatoes
                "Failed: needs attention",  # 1003, no such Klarna order ...
                "Klarna has no order with this id",  # ... with advice
                "Waiting for Klarna credentials",  # 1004
            ):
                assert state in activity.text, state

        # The Shopify shop, installed through the fake Shopify, holds the same states.
        with httpx2.Client(follow_redirects=True, timeout=10) as merchant:
            settings = press_sign_in(merchant, shopify_link, service)
            assert settings.status_code == 200
            shopify_id = settings.url.path.split("/")[2]
            assert shopify_id != shop_id
            activity = merchant.get(f"{service}/admin/{shopify_id}/activity")
            for state in (
                "Captured",
                "€23.90",  # one tomato of two (19.00 after its share of the discount) and shipping
                "Refund",
                "Failed: needs attention",
                "Klarna has no order with this id",
                "Waiting for Klarna credentials",
            ):
                assert state in activity.text, state

        # The WooCommerce shop, added with its site's REST API key: completed orders captured
        # whole (WooCommerce has no partial capture), a refund, a failure, a wait.
        with signed_in_with(woocommerce_link, service) as (merchant, woocommerce_id):
            activity = merchant.get(f"{service}/admin/{woocommerce_id}/activity")
            for state in (
                "Captured",
                "€73.13",  # ten tomatoes, two basil, shipping, all with VAT
                "Refund",
                "€12.00",  # two tomatoes
                "Failed: needs attention",
                "Klarna has no order with this id",
                "Waiting for Klarna credentials",
            ):
                assert state in activity.text, state

        # The BigCommerce shop, installed through the fake BigCommerce's OAuth.
        with signed_in_with(bigcommerce_link, service) as (merchant, bigcommerce_id):
            activity = merchant.get(f"{service}/admin/{bigcommerce_id}/activity")
            for state in (
                "Captured",
                "Partly captured: €23.90 of €52.90",  # one tomato of two, and shipping
                "Refund",
                "€19.00",  # a tomato
                "Failed: needs attention",
                "Klarna has no order with this id",
                "Waiting for Klarna credentials",
            ):
                assert state in activity.text, state
        assert len({shop_id, shopify_id, woocommerce_id, bigcommerce_id}) == 4

        # Sign-in by mail: the link arrives at the demo's mail server, which prints it.
        with httpx2.Client(follow_redirects=True, timeout=10) as merchant:
            form = merchant.get(login[1]).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert token is not None
            asked = merchant.post(
                login[1],
                data={"csrf_token": token[1], "email": login[2]},
                headers={"origin": service},  # as a browser sends with a form
            )
            assert "a mail with a sign-in link" in asked.text
            output.until(f"^mail to {re.escape(login[2])}: ")
            # A link for each shop registered to the address: the four; Corner shop's here.
            mailed_links: dict[str, str] = {}
            for _ in range(4):
                listed = output.until(r"^  .+ \((shop_\w+)\):$")[1]
                mailed_links[listed] = output.until(r"(http://\S+/admin/login\?token=\S+)")[1]
            assert set(mailed_links) == {shop_id, shopify_id, woocommerce_id, bigcommerce_id}
            mailed = mailed_links[shop_id]
            signed_in = press_sign_in(merchant, mailed, service)
            assert signed_in.url.path == f"/admin/{shop_id}/settings"

        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
        output.until("^removed the data dir")
    finally:
        if demo.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        output.close()
    assert demo.returncode == 0, "".join(output.said)
    said = "".join(output.said)
    for stopped in ("stopped service", "stopped Klarna sandbox", "stopped the mail server"):
        assert stopped in said, said
    assert not data_dir.exists()
    for stopped_at in (f"{service}/readyz", f"{sandbox}/sandbox/orders/none"):
        with pytest.raises(httpx2.TransportError):
            httpx2.get(stopped_at, timeout=2)
