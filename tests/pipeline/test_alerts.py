"""Failure alerts (issue 19), on every backend, received by a real SMTP server on loopback: a
shop that asked for them gets one mail listing its new dead letters and refused calls with a link
to each, at most one an hour; a shop that did not gets nothing; two processes never both send;
nothing is lost (a failure stamped late, a send that failed or was cancelled) and nothing is
listed twice; alerts turned on again do not mail what failed while they were off."""

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from plugin.config import MailSettings, load_settings
from plugin.pipeline import alerts
from plugin.store import (
    FinishOrderOperation,
    PlanOrderOperation,
    ShopChanges,
    Store,
    open_store,
)
from plugin.store.records import ShopOptions
from tests.mail_server import Inbox, body, smtp_server
from tests.store.test_store import NOW, add_shop, database_url, store
from tests.web.support import page_settings, running

pytestmark = pytest.mark.anyio
__all__ = ["database_url", "store"]
PUBLIC_URL = "https://capture.example"
HOUR = alerts.ALERT_EVERY_SECONDS


@pytest.fixture
def server() -> Iterator[tuple[Inbox, str]]:
    with smtp_server() as running:
        yield running


def mail_settings(url: str) -> MailSettings:
    return load_settings(
        {"KLARNA_CAPTURE_SMTP_URL": url, "KLARNA_CAPTURE_MAIL_FROM": "capture@example.com"}
    ).mail


async def shop_with_alerts(store: Store, shop_id: str, *, alerts_on: bool = True) -> None:
    await add_shop(store, shop_id)
    options = ShopOptions(failure_alerts=alerts_on)
    await store.update_shop(
        shop_id, ShopChanges(email=f"{shop_id}@example.com", options=options), NOW
    )


async def dead_letter(
    store: Store, shop_id: str, fulfillment_id: str, at: float, *, order: bool = False
) -> None:
    """A shipment of `shop_id` (or with `order`, an order of that id) whose job died at `at`
    with Klarna's NO_SUCH_ORDER."""
    await store.record_delivery(
        shop_id,
        f"d-{fulfillment_id}",
        body=b"{}",
        event_type="orders/updated" if order else "fulfillment.created",
        fulfillment_id=None if order else fulfillment_id,
        order_id=fulfillment_id if order else None,
        order_event=order,
        rejected=None,
        now=at,
    )
    job = await store.claim_job("w1", 60, at)
    assert job is not None
    assert job.key == fulfillment_id
    assert await store.bury_job(job.id, "w1", '{"error_code":"NO_SUCH_ORDER"}', at)


async def refused_refund(store: Store, shop_id: str, order_id: str, at: float) -> None:
    plan = PlanOrderOperation(
        shop_id=shop_id,
        kind="refund",
        key=f"R-{order_id}",
        order_id=order_id,
        klarna_order_id="K1",
        currency="EUR",
        idempotency_key=f"key-{order_id}",
        request=b"{}",
        amount=500,
    )
    await store.plan_order_operation(plan, at)
    refused = FinishOrderOperation(
        shop_id=shop_id,
        kind="refund",
        key=f"R-{order_id}",
        state="failed",
        result=None,
        amount=None,
        error='{"error_code":"REFUND_NOT_ALLOWED"}',
    )
    await store.finish_order_operation(refused, None, at)


async def test_failures_within_the_hour_make_one_mail_and_the_next_hour_another(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    settings = mail_settings(url)
    await shop_with_alerts(store, "shop_1")
    await dead_letter(store, "shop_1", "F/1", NOW + 10)
    await refused_refund(store, "shop_1", "O1", NOW + 20)

    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30) == 1
    [(recipients, first)] = inbox.messages
    assert recipients == ["shop_1@example.com"]
    assert first["Subject"] == alerts.SUBJECT
    text = body(first)
    assert "Shipment F/1: failed, needs attention (NO_SUCH_ORDER)" in text
    assert f"{PUBLIC_URL}/admin/shop_1/shipments/F%2F1" in text
    assert "Order O1: refund refused (REFUND_NOT_ALLOWED)" in text
    assert f"{PUBLIC_URL}/admin/shop_1/orders/O1" in text

    # Another failure within the hour: no mail until the hour is up, then one with it alone.
    await dead_letter(store, "shop_1", "F2", NOW + 40)
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 50) == 0
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30 + HOUR - 1) == 0
    assert len(inbox.messages) == 1
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30 + HOUR) == 1
    assert len(inbox.messages) == 2
    second = body(inbox.messages[1][1])
    assert "Shipment F2" in second
    assert "F/1" not in second
    assert "O1" not in second
    # Nothing new: no mail, however long after.
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30 + 3 * HOUR) == 0
    assert len(inbox.messages) == 2


@pytest.mark.parametrize(
    ("time_zone", "locale", "since"),
    [
        ("Europe/Berlin", "de_DE", "15. Jan. 2027, 08:00 CET"),
        ("America/New_York", "en_US", "Jan 15, 2027, 2:00\u202fAM EST"),
        ("UTC", "en", "Jan 15, 2027, 7:00\u202fAM UTC"),
    ],
)
async def test_an_alert_says_since_when_in_the_shops_time_zone_and_locale(
    store: Store, server: tuple[Inbox, str], time_zone: str, locale: str, since: str
) -> None:
    inbox, url = server
    await add_shop(store, "shop_1")
    options = ShopOptions(failure_alerts=True, time_zone=time_zone, locale=locale)
    await store.update_shop("shop_1", ShopChanges(email="shop_1@example.com", options=options), NOW)
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    # The first alert covers the hour before it: since NOW + 30 - 1 h, 07:00 UTC.
    assert await alerts.alert_all(store, mail_settings(url), PUBLIC_URL, NOW + 30) == 1
    [(_, sent)] = inbox.messages
    assert body(sent).splitlines()[0] == f"In S (shop_1), since {since}:"


async def test_a_shop_that_did_not_ask_gets_nothing(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    await shop_with_alerts(store, "shop_1", alerts_on=False)
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    assert await alerts.alert_all(store, mail_settings(url), PUBLIC_URL, NOW + 20) == 0
    assert inbox.messages == []
    assert await store.last_alert("shop_1") is None


async def test_two_processes_send_one_alert(database_url: str, server: tuple[Inbox, str]) -> None:
    inbox, url = server
    settings = mail_settings(url)
    first, second = open_store(database_url), open_store(database_url)
    await first.migrate()
    try:
        await shop_with_alerts(first, "shop_1")
        await dead_letter(first, "shop_1", "F1", NOW + 10)
        sent: list[int] = []

        async def one_pass(store: Store) -> None:
            sent.append(await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 20))

        async with anyio.create_task_group() as group:
            group.start_soon(one_pass, first)
            group.start_soon(one_pass, second)
        assert sorted(sent) == [0, 1]
        assert len(inbox.messages) == 1
    finally:
        await first.close()
        await second.close()


async def test_an_alert_that_did_not_leave_is_sent_at_the_next_pass(store: Store) -> None:
    await shop_with_alerts(store, "shop_1")
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    with smtp_server() as (inbox, url):
        settings = mail_settings(url)
    # The server is gone: nothing leaves, and the alert stays due.
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 20) == 0
    with smtp_server() as (inbox, url):
        settings = mail_settings(url)
        assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30) == 1
        [(_, mail)] = inbox.messages
        assert "Shipment F1" in body(mail)


def test_the_running_service_sends_the_alerts_where_its_workers_run(
    tmp_path: Path, klarna_url: str, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    extra = {"KLARNA_CAPTURE_SMTP_URL": url, "KLARNA_CAPTURE_MAIL_FROM": "capture@example.com"}
    settings = page_settings(tmp_path, klarna_url, workers=1, extra=extra)

    async def prepare() -> None:
        store = open_store(settings.database.url)
        await store.migrate()
        try:
            await shop_with_alerts(store, "shop_1")
            await dead_letter(store, "shop_1", "F1", time.time() - 60)
        finally:
            await store.close()

    anyio.run(prepare)
    # The first pass runs as the service starts; the server's event says the mail arrived.
    with running(settings):
        assert inbox.received.wait(timeout=60)
    [(recipients, mail)] = inbox.messages
    assert recipients == ["shop_1@example.com"]
    assert "Shipment F1" in body(mail)


async def test_a_failure_stamped_before_the_last_alert_is_in_the_next_and_none_twice(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    settings = mail_settings(url)
    await shop_with_alerts(store, "shop_1")
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30) == 1
    # Committed after that pass read, by a worker whose clock stamped it before the alert.
    await dead_letter(store, "shop_1", "F2", NOW + 25)
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30 + HOUR) == 1
    second = body(inbox.messages[1][1])
    assert "Shipment F2" in second
    assert "F1" not in second
    # Both listed once: nothing more to say.
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 30 + 2 * HOUR) == 0
    assert len(inbox.messages) == 2


async def test_a_send_cancelled_after_the_claim_gives_the_claim_back(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    await shop_with_alerts(store, "shop_1")
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    # A mail server that takes the connection and never greets: the send hangs until the
    # process is shut down (cancelled) once the connection is in.
    connected = anyio.Event()

    async def silent(client: anyio.abc.SocketStream) -> None:
        async with client:
            connected.set()
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - not Django
    sending = anyio.CancelScope()
    ended = anyio.Event()

    async def send() -> None:
        with sending:
            await alerts.alert_all(
                store, mail_settings(f"smtp://127.0.0.1:{port}"), PUBLIC_URL, NOW + 20
            )
        ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, silent)
        group.start_soon(send)
        await connected.wait()
        assert await store.last_alert("shop_1") == NOW + 20  # claimed
        sending.cancel()
        await ended.wait()
        group.cancel_scope.cancel()
    await listener.aclose()
    # Given back: the next pass sends it, listing what the cancelled one would have.
    assert await store.last_alert("shop_1") != NOW + 20
    assert await alerts.alert_all(store, mail_settings(url), PUBLIC_URL, NOW + 30) == 1
    [(_, mail)] = inbox.messages
    assert "Shipment F1" in body(mail)


async def test_a_refused_refund_lists_its_order_once(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    await shop_with_alerts(store, "shop_1")
    # The refused call, and the order's job that died of it.
    await refused_refund(store, "shop_1", "O1", NOW + 10)
    await dead_letter(store, "shop_1", "O1", NOW + 10, order=True)
    # An order job dead of something else is listed.
    await dead_letter(store, "shop_1", "O2", NOW + 15, order=True)
    assert await alerts.alert_all(store, mail_settings(url), PUBLIC_URL, NOW + 20) == 1
    text = body(inbox.messages[0][1])
    assert text.count("Order O1") == 1
    assert "Order O1: refund refused (REFUND_NOT_ALLOWED)" in text
    assert "Order O2: failed, needs attention (NO_SUCH_ORDER)" in text


async def test_alerts_turned_on_again_do_not_mail_what_failed_while_they_were_off(
    store: Store, server: tuple[Inbox, str]
) -> None:
    inbox, url = server
    settings = mail_settings(url)
    await shop_with_alerts(store, "shop_1")
    await dead_letter(store, "shop_1", "F1", NOW + 10)
    assert await alerts.alert_all(store, settings, PUBLIC_URL, NOW + 20) == 1
    off = NOW + 100
    await store.update_shop("shop_1", ShopChanges(options=ShopOptions(failure_alerts=False)), off)
    months = 90 * 24 * HOUR
    await dead_letter(store, "shop_1", "F-while-off", off + months / 2)
    on = off + months
    await store.update_shop("shop_1", ShopChanges(options=ShopOptions(failure_alerts=True)), on)
    await dead_letter(store, "shop_1", "F-since-on", on + 10)
    assert await alerts.alert_all(store, settings, PUBLIC_URL, on + 20) == 1
    second = body(inbox.messages[1][1])
    assert "Shipment F-since-on" in second
    assert "F-while-off" not in second
