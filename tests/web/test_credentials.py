"""Klarna credentials that heal by themselves, through the real app on both stores and the Klarna
sandbox over HTTP: a shipment whose shop's credentials Klarna refuses (or that has none) waits on
them, neither failed nor dead; saving credentials on the settings page or with the CLI resumes
it at once and it is captured once; the connection test runs before a save and its outcome shows
beside the password; the settings and activity pages announce the waiting shipments."""

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest

from plugin.credentials import OUTCOME_TEXTS, check_credentials
from plugin.klarna import RetryPolicy
from plugin.klarna.client import UNAUTHORIZED_HINT
from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox, SandboxOrder
from plugin.store.records import KLARNA_CREDENTIALS, Shipment, Shop
from plugin.worker import Backoff
from tests.helpers import TOMATOES, free_port, run_cli, shipment, wait_until
from tests.web.support import (
    SANDBOX_PASSWORD,
    Site,
    cli_env,
    page_settings,
    running,
    shown_time,
    stored,
)

WRONG = "a-wrong-password-9"
DHL = {"carrier": "DHL", "method": "Home", "tracking_number": "JJD0001"}
UPS = {"carrier": "UPS", "method": "Home", "tracking_number": "1Z0002"}


@pytest.fixture
def settings_env(store_env: dict[str, str]) -> dict[str, str]:
    """The app on the SQLite file or on a PostgreSQL database of the test's own."""
    return store_env


def new_order(sandbox: KlarnaSandbox) -> SandboxOrder:
    return sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])


def current(site: Site, shop_id: str, fulfillment_id: str) -> Shipment | None:
    found: Shipment | None = site.call(site.service.store.shipment, shop_id, fulfillment_id)
    return found


def wait_for_state(site: Site, shop_id: str, fulfillment_id: str, state: str) -> Shipment:
    def reached() -> bool:
        found = current(site, shop_id, fulfillment_id)
        return found is not None and found.job_state == state

    wait_until(reached, what=f"for {fulfillment_id} to be {state}")
    found = current(site, shop_id, fulfillment_id)
    assert found is not None
    return found


def deliver(site: Site, shop: tuple[Shop, str], event: dict[str, Any]) -> None:
    answer = site.deliver(shop[0].id, shop[1], event)
    assert answer.status_code == 200, answer.text


def beside_the_password(html: str) -> str:
    """The connection test's outcome, shown under the password field."""
    match = re.search(r'<p class="(ok|error)" role="status" id="connection-test">([^<]*)</p>', html)
    assert match, html
    return f"{match.group(1)}: {match.group(2)}"


def banner(html: str) -> str | None:
    match = re.search(r'<p class="warning" role="alert" id="waiting-banner">(.*?)</p>', html, re.S)
    return None if match is None else re.sub(r"<[^>]+>", "", match.group(1))


def shown(when: float) -> str:
    """A moment as the banner's text shows it (its `<time>` element taken off, as banner does)."""
    return re.sub(r"<[^>]+>", "", shown_time(datetime.fromtimestamp(when, UTC)))


def test_a_refused_password_makes_shipments_wait_until_the_right_one_is_saved_on_the_page(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = site.create_shop()
    shop_id = shop[0].id
    browser = site.sign_in(shop_id)

    # saved anyway, with the connection test's refusal beside the field
    saved = browser.save_settings(klarna_password=WRONG)
    assert saved.status_code == 303
    page = browser.get(saved.headers["location"]).text
    assert "Settings saved anyway" in page
    assert beside_the_password(page) == f"error: {OUTCOME_TEXTS['refused']}"
    assert UNAUTHORIZED_HINT.replace("'", "&#39;") in page
    assert stored(site, shop_id)[1] == WRONG

    order = new_order(klarna_sandbox)
    deliver(site, shop, shipment(order.order_id, "1001-F1"))
    waiting = wait_for_state(site, shop_id, "1001-F1", "waiting")
    assert waiting.attempts == 0
    assert waiting.capture_state is None
    assert order.captures == []
    assert site.call(site.service.store.job_counts).get("dead", 0) == 0

    activity = browser.get(f"{browser.base}/activity").text
    assert '<span class="badge">Waiting for Klarna credentials</span>' in activity
    assert "dead" not in activity
    assert "failed" not in activity
    since = site.call(site.service.store.waiting, shop_id, KLARNA_CREDENTIALS).since
    assert since is not None
    text = banner(activity)
    assert text is not None
    assert f"1 shipment waiting on your Klarna credentials, the oldest since {shown(since)}" in (
        text
    )
    assert banner(browser.get(f"{browser.base}/settings").text) == text
    detail = browser.get(f"{browser.base}/shipments/1001-F1").text
    assert "<dt>Waiting</dt>" in detail
    assert "<dt>Failure</dt>" not in detail

    # the right password: tested, saved, and the shipment resumes by itself, captured once
    fixed = browser.save_settings(klarna_password=SANDBOX_PASSWORD)
    assert fixed.headers["location"].endswith("?notice=saved&klarna=accepted")
    page = browser.get(fixed.headers["location"]).text
    assert beside_the_password(page) == f"ok: {OUTCOME_TEXTS['accepted']}"
    done = wait_for_state(site, shop_id, "1001-F1", "done")
    assert done.capture_state == "captured"
    assert len(order.captures) == 1
    assert banner(browser.get(f"{browser.base}/activity").text) is None

    # a save that changes only an option asks Klarna nothing: the credentials were tested when
    # they changed
    asked = len(klarna_sandbox.requests)
    options = browser.save_settings(description_template="Parcel {fulfillment_name}")
    assert options.headers["location"].endswith("?notice=saved")
    assert len(klarna_sandbox.requests) == asked


def test_credentials_set_with_the_cli_resume_the_waiting_shipments(
    site: Site, klarna_sandbox: KlarnaSandbox, klarna_url: str, store_env: dict[str, str]
) -> None:
    shop = site.create_shop(password=WRONG)
    shop_id = shop[0].id
    env = cli_env(site.settings, KLARNA_CAPTURE_KLARNA_URL=klarna_url, **store_env)
    order = new_order(klarna_sandbox)
    deliver(site, shop, shipment(order.order_id, "1001-F1"))
    assert wait_for_state(site, shop_id, "1001-F1", "waiting").attempts == 0

    # still wrong: saved anyway, with the warning; nothing resumed is captured
    again = run_cli(env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin=WRONG)
    assert f"warning: {OUTCOME_TEXTS['refused']}" in again.stderr
    assert "saved anyway" in again.stderr
    assert WRONG not in again.stdout + again.stderr

    fixed = run_cli(
        env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin=SANDBOX_PASSWORD
    )
    assert OUTCOME_TEXTS["accepted"] in fixed.stdout
    assert "saved anyway" not in fixed.stderr
    done = wait_for_state(site, shop_id, "1001-F1", "done")
    assert done.capture_state == "captured"
    assert len(order.captures) == 1
    assert stored(site, shop_id)[1] == SANDBOX_PASSWORD


def test_a_shop_without_credentials_waits_for_them_and_captures_once_they_are_entered(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = site.create_shop(username="")
    shop_id = shop[0].id
    browser = site.sign_in(shop_id)
    order = new_order(klarna_sandbox)
    deliver(site, shop, shipment(order.order_id, "1001-F1"))
    waiting = wait_for_state(site, shop_id, "1001-F1", "waiting")
    assert waiting.attempts == 0
    assert waiting.last_error is not None
    assert "KLARNA_NOT_CONFIGURED" in waiting.last_error
    assert "1 shipment waiting" in (banner(browser.get(f"{browser.base}/settings").text) or "")

    saved = browser.save_settings(klarna_username="PK_SANDBOX", klarna_password=SANDBOX_PASSWORD)
    assert saved.headers["location"].endswith("?notice=saved&klarna=accepted")
    assert wait_for_state(site, shop_id, "1001-F1", "done").capture_state == "captured"
    assert len(order.captures) == 1


def test_the_banner_counts_the_waiting_and_names_the_earliest_expiry_when_known(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = site.create_shop()
    shop_id = shop[0].id
    browser = site.sign_in(shop_id)
    captured_first = new_order(klarna_sandbox)
    deliver(site, shop, shipment(captured_first.order_id, "1001-F1", shipping=[DHL]))
    assert wait_for_state(site, shop_id, "1001-F1", "done").capture_state == "captured"
    assert browser.save_settings(klarna_password=WRONG).status_code == 303

    # refused while planning: the Klarna order was never read, its expiry is not known
    unread = new_order(klarna_sandbox)
    deliver(site, shop, shipment(unread.order_id, "1002-F1"))
    wait_for_state(site, shop_id, "1002-F1", "waiting")
    text = banner(browser.get(f"{browser.base}/activity").text)
    assert text is not None
    assert "1 shipment waiting" in text
    assert "expires" not in text

    # refused when adding tracking to a capture: its order was read when planned
    deliver(
        site,
        shop,
        shipment(
            captured_first.order_id,
            "1001-F1",
            shipping=[DHL, UPS],
            event_type="fulfillment.updated",
        ),
    )
    wait_for_state(site, shop_id, "1001-F1", "waiting")
    summary = site.call(site.service.store.waiting, shop_id, KLARNA_CREDENTIALS)
    assert summary.count == 2
    assert summary.expires_at == captured_first.expires_at.timestamp()
    assert summary.since is not None
    for page in ("activity", "settings"):
        text = banner(browser.get(f"{browser.base}/{page}").text)
        assert text is not None
        assert "2 shipments waiting on your Klarna credentials, the oldest since " in text
        assert shown(summary.since) in text
        expiry = shown(captured_first.expires_at.timestamp())
        assert f"The earliest Klarna authorization among them expires {expiry}" in text

    # the right password: both resume, the tracking is added, nothing is captured twice
    assert browser.save_settings(klarna_password=SANDBOX_PASSWORD).status_code == 303
    wait_for_state(site, shop_id, "1001-F1", "done")
    wait_for_state(site, shop_id, "1002-F1", "done")
    [capture] = captured_first.captures
    assert [s.tracking_number for s in capture.shipping_info] == ["JJD0001", "1Z0002"]
    assert len(unread.captures) == 1


def test_a_capture_sent_before_a_401_stays_planned_and_is_settled_once_by_klarnas_word(
    tmp_path: Path, klarna_url: str, klarna_sandbox: KlarnaSandbox, store_env: dict[str, str]
) -> None:
    # A long backoff: the capture whose answer was lost runs again only when the test says so.
    with running(
        page_settings(tmp_path, klarna_url, extra=store_env),
        backoff=Backoff(base_seconds=3600, max_seconds=3600, attempts=5),
        klarna_retry=RetryPolicy(attempts=1),
        klarna_timeout=httpx2.Timeout(5.0, read=1.0),  # the lost answer is given up in 1 s
    ) as site:
        shop = site.create_shop()
        shop_id = shop[0].id
        browser = site.sign_in(shop_id)
        order = new_order(klarna_sandbox)
        # Klarna makes the capture, and its answer is lost on the way back.
        klarna_sandbox.set_faults(FaultSettings(order_id=order.order_id, drop_after_commit_next=1))
        deliver(site, shop, shipment(order.order_id, "1001-F1"))

        def answer_lost() -> bool:
            found = current(site, shop_id, "1001-F1")
            return found is not None and found.job_state == "queued" and found.attempts == 1

        wait_until(answer_lost, what="for the lost answer's retry to be queued")
        assert len(order.captures) == 1
        assert browser.save_settings(klarna_password=WRONG).status_code == 303
        lost = current(site, shop_id, "1001-F1")
        assert lost is not None
        assert site.call(site.service.store.requeue_job, lost.job_id, time.time())

        waiting = wait_for_state(site, shop_id, "1001-F1", "waiting")
        assert waiting.capture_state == "planned"  # the ledger keeps the plan and its key
        assert waiting.last_error is not None
        refused = msgspec.json.decode(waiting.last_error)
        assert (refused["step"], refused["status"]) == ("capture", 401)

        assert browser.save_settings(klarna_password=SANDBOX_PASSWORD).status_code == 303
        done = wait_for_state(site, shop_id, "1001-F1", "done")
        [capture] = order.captures  # the same key again: Klarna answers with the one it made
        assert (done.capture_state, done.capture_id) == ("captured", capture.capture_id)


# the connection test beside the field


def test_the_connection_test_shows_accepted_and_refused_beside_the_password(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = site.create_shop()
    browser = site.sign_in(shop[0].id)
    action = f"{browser.base}/settings/test-connection"
    for password, outcome in ((SANDBOX_PASSWORD, "accepted"), (WRONG, "refused")):
        fields = browser.settings_form()
        fields["klarna_password"] = password
        answer = browser.post(action, fields, token=fields.pop("csrf_token"))
        assert answer.status_code == 200
        kind = "ok" if outcome == "accepted" else "error"
        assert beside_the_password(answer.text) == f"{kind}: {OUTCOME_TEXTS[outcome]}"
        assert password not in answer.text


def test_an_unreachable_klarna_is_said_beside_the_password_and_the_save_goes_through(
    tmp_path: Path,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with running(page_settings(tmp_path, closed)) as site:
        shop = site.create_shop()
        browser = site.sign_in(shop[0].id)
        fields = browser.settings_form()
        fields["klarna_password"] = "typed-while-klarna-is-away"
        answer = browser.post(
            f"{browser.base}/settings/test-connection", fields, token=fields.pop("csrf_token")
        )
        assert beside_the_password(answer.text) == f"error: {OUTCOME_TEXTS['unreachable']}"

        saved = browser.save_settings(klarna_password="typed-while-klarna-is-away")
        assert saved.headers["location"].endswith("?notice=saved-anyway&klarna=unreachable")
        page = browser.get(saved.headers["location"]).text
        assert "Settings saved anyway" in page
        assert beside_the_password(page) == f"error: {OUTCOME_TEXTS['unreachable']}"
        assert stored(site, shop[0].id)[1] == "typed-while-klarna-is-away"


def test_a_klarna_that_does_not_answer_is_unreachable_after_the_deadline(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    klarna_sandbox.set_faults(FaultSettings(latency_ms=3_000))
    tested = site.call(
        check_credentials,
        site.service.pipeline.klarna_http[0],
        username="PK_SANDBOX",
        password=SANDBOX_PASSWORD,
        region="eu",
        environment="playground",
        url=site.settings.klarna.url,
        deadline=0.2,
    )
    assert (tested.outcome, tested.detail) == (
        "unreachable",
        "Klarna did not answer within 0.2 s",
    )
