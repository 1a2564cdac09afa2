"""The "shopify" payment flow end to end: the real service under uvicorn with a real SQLite file,
the fake Shopify (its `orderCapture` with Shopify's rules) and the Klarna sandbox over HTTP. A
fulfilment webhook goes in; Shopify captures the shipment's amount from the order's Klarna
authorization, once, and Klarna is never called."""

import json
import uuid
from datetime import timedelta

from plugin.app import create_app
from plugin.config import Settings
from plugin.sandbox.klarna import KlarnaSandbox, SandboxCapture
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import Line, ShippingLine, ShopifySandbox, Tax, Transaction
from plugin.store.records import ShopOptions
from plugin.worker import Backoff
from tests.helpers import run_cli, wait_idle, wait_until
from tests.platforms.shopify.test_service import (
    DOMAIN,
    cli_environment,
    install,
    send,
    settings_env,
    status_of,
)
from tests.web.support import count, database

__all__ = ["settings_env"]

SHOPIFY_FLOW = ShopOptions(payment_flow="shopify")


def place_order(
    shopify: ShopifySandbox,
    *,
    multi_capturable: bool = True,
    kind: str = "AUTHORIZATION",
    authorized: str | tuple[str, str] | None = None,
    presentment: str | None = None,
) -> str:
    """A tax-included order of 2 x 20.00 tomatoes (2.00 off) and 1 x 10.00 basil, 4.90 shipping
    (52.90 in all), paid with Klarna through Shopify's checkout: authorized only (manual
    capture). With `presentment` ("SEK"), the customer paid in SEK at ten to the euro."""

    def money(eur: str) -> str | tuple[str, str]:
        if presentment is None:
            return eur
        return (eur, str(int(float(eur) * 1000) / 100))

    gid = shopify.add_order(
        DOMAIN,
        [
            Line(
                "Tomatoes", money("20.00"), quantity=2, sku="TOM", discounts=[money("2.00")],
                taxes=[Tax("0.07", money("2.49"))],
            ),
            Line("Basil", money("10.00"), sku="BAS", taxes=[Tax("0.07", money("0.65"))]),
        ],
        shipping=[ShippingLine("Standard", money("4.90"), taxes=[Tax("0.19", money("0.78"))])],
        presentment_currency=presentment,
        transactions=[
            Transaction("Klarna", kind=kind, amount=authorized, multi_capturable=multi_capturable)
        ],
    )  # fmt: skip
    return gid


def tomatoes(shopify: ShopifySandbox, gid: str) -> str:
    nodes = shopify.order_json(DOMAIN, gid)["lineItems"]["nodes"]
    return str(next(node["id"] for node in nodes if node["sku"] == "TOM"))


def captures(shopify: ShopifySandbox, gid: str) -> list[tuple[str, str]]:
    payments = shopify.payments(DOMAIN, gid)
    return [(status, amount) for kind, status, amount in payments if kind == "CAPTURE"]


def capture_calls(shopify: ShopifySandbox) -> int:
    return sum(1 for r in shopify.requests if r.operation == "orderCapture")


def ledger(settings: Settings) -> list[tuple[str, str, int | None, str | None]]:
    with database(settings) as conn:
        rows = conn.execute(
            "SELECT state, currency, captured_amount, capture_id FROM captures ORDER BY created_at"
        ).fetchall()
    return [(str(a), str(b), c, d) for a, b, c, d in rows]


def dead_error(settings: Settings) -> str:
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 1,
        what="the dead letter",
    )
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'dead'").fetchone()
    return str(error)


def test_each_fulfilment_is_captured_through_shopify_and_klarna_is_never_called(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, klarna=False, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)

    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes(shopify_sandbox, gid): 1})
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "partially_captured", what="the first")
    # One tomato with half the discount, and the shipping fee on the first shipment. Shopify
    # answered PENDING; the next read of the order confirmed it.
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "23.90")]

    rest = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", rest).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the second")
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "23.90"), ("SUCCESS", "29.00")]
    assert [(state, amount) for state, _, amount, _ in ledger(settings)] == [
        ("captured", 2390),
        ("captured", 2900),
    ]
    assert capture_calls(shopify_sandbox) == 2
    assert klarna_sandbox.requests == []  # no capture, no read, nothing at Klarna


def test_duplicates_and_redeliveries_capture_once(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    webhook_id = str(uuid.uuid4())

    answers = [
        send(service, "fulfillments/create", body, **{"X-Shopify-Webhook-Id": webhook_id})
        for _ in range(3)
    ]
    answers += [send(service, "fulfillments/create", body) for _ in range(2)]

    assert [a.json()["status"] for a in answers].count("accepted") == 3
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    wait_idle(settings)
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]
    assert capture_calls(shopify_sandbox) == 1
    assert klarna_sandbox.requests == []


def test_a_capture_whose_answer_was_lost_is_settled_by_shopifys_transactions(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)
    shopify_sandbox.lose_next_capture_answer()  # Shopify captures; the answer never arrives

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    wait_idle(settings)
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]
    assert capture_calls(shopify_sandbox) == 1  # the rerun read the order and sent nothing
    [(state, currency, amount, capture_id)] = ledger(settings)
    assert (state, currency, amount) == ("captured", "EUR", 5290)
    assert capture_id is not None
    assert capture_id.startswith("gid://shopify/OrderTransaction/")
    with database(settings) as conn:
        outcomes = [o for (o,) in conn.execute("SELECT outcome FROM audit ORDER BY id")]
    assert "already_captured" in outcomes


def test_a_capture_whose_answer_was_lost_is_kept_when_the_fulfilment_is_cancelled_after(
    settings: Settings, shopify_sandbox: ShopifySandbox
) -> None:
    """Shopify captures but its answer never arrives; before the retry the merchant cancels the
    fulfilment. The retry must not skip it as cancelled: Shopify has the money."""
    app = create_app(
        settings, backoff=Backoff(base_seconds=2, max_seconds=2, attempts=4), poll_seconds=0.05
    )
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)
    shopify_sandbox.lose_next_capture_answer()
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    with serve_in_thread(app) as service:
        assert send(service, "fulfillments/create", body).is_success
        wait_until(lambda: len(captures(shopify_sandbox, gid)) == 1, what="Shopify's capture")
        cancelled = shopify_sandbox.cancel_fulfillment(DOMAIN, gid, body["id"])
        assert send(service, "fulfillments/update", cancelled).is_success

        wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    [(state, _, amount, capture_id)] = ledger(settings)
    assert (state, amount) == ("captured", 5290)
    assert capture_id is not None
    assert capture_id.startswith("gid://shopify/OrderTransaction/")
    with database(settings) as conn:
        steps = [row[0] for row in conn.execute("SELECT step FROM audit ORDER BY id")]
    assert "skip" not in steps
    assert capture_calls(shopify_sandbox) == 1


def test_a_capture_that_stays_pending_is_never_sent_again(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)
    shopify_sandbox.capture_pending_reads = 1000

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    assert "CAPTURE_PENDING" in dead_error(settings)
    assert captures(shopify_sandbox, gid) == [("PENDING", "52.90")]
    assert capture_calls(shopify_sandbox) == 1
    assert status_of(shopify_sandbox, gid) is None  # in progress: not written back as failed
    # The gateway finishes; the merchant retries the shipment.
    shopify_sandbox.settle_captures(DOMAIN, gid)
    with database(settings) as conn:
        [job_id] = conn.execute("SELECT id FROM jobs WHERE state = 'dead'").fetchone()
    run_cli(cli_environment(settings), "jobs", "retry", str(job_id))
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the confirmation")
    assert capture_calls(shopify_sandbox) == 1
    assert [state for state, *_ in ledger(settings)] == ["captured"]


def test_the_capture_is_in_the_presentment_currency(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox, presentment="SEK")

    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes(shopify_sandbox, gid): 1})
    assert send(service, "fulfillments/create", first).is_success

    wait_until(lambda: status_of(shopify_sandbox, gid) == "partially_captured", what="capture")
    # Shopify refuses a capture in any other currency than the customer's.
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "239.00")]
    [(state, currency, amount, _)] = ledger(settings)
    assert (state, currency, amount) == ("captured", "SEK", 23900)


def test_a_refused_capture_is_a_dead_letter_with_shopifys_words(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox, authorized="10.00")  # less than the shipment

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    error = dead_error(settings)
    assert "SHOPIFY_CAPTURE_REFUSED" in error
    assert "greater than the capturable amount 10.00 EUR" in error
    assert captures(shopify_sandbox, gid) == []
    wait_until(lambda: status_of(shopify_sandbox, gid) == "failed", what="the failure")


def test_a_shop_that_cannot_capture_in_parts_captures_the_whole_order_at_its_first_shipment(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    options = ShopOptions(payment_flow="shopify", single_capture="first")
    install(settings, shopify_sandbox, options=options)
    gid = place_order(shopify_sandbox, multi_capturable=False)

    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes(shopify_sandbox, gid): 1})
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: len(ledger(settings)) == 1 and ledger(settings)[0][0] == "captured")
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the second")
    wait_idle(settings)
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]
    assert capture_calls(shopify_sandbox) == 1
    # The second shipment was covered by the first capture: recorded, nothing sent.
    assert [(state, amount) for state, _, amount, _ in ledger(settings)] == [
        ("captured", 5290),
        ("captured", 0),
    ]


def test_a_shop_that_cannot_capture_in_parts_captures_the_whole_order_at_its_last_shipment(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)  # "last" is the default
    gid = place_order(shopify_sandbox, multi_capturable=False)

    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes(shopify_sandbox, gid): 1})
    assert send(service, "fulfillments/create", first).is_success
    wait_idle(settings)
    assert captures(shopify_sandbox, gid) == []
    assert capture_calls(shopify_sandbox) == 0

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")], what="capture")
    wait_idle(settings)
    assert capture_calls(shopify_sandbox) == 1


def test_an_order_paid_at_checkout_is_recorded_as_captured_by_shopify(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox, kind="SALE")  # the shop captures automatically

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the record")
    assert capture_calls(shopify_sandbox) == 0
    [(state, _, amount, _)] = ledger(settings)
    assert (state, amount) == ("captured", 0)
    with database(settings) as conn:
        [detail] = conn.execute(
            "SELECT detail FROM audit WHERE outcome = 'captured_by_storefront'"
        ).fetchone()
    # The shipment's page says why, and what the merchant would change.
    assert "only manual capture lets each shipment be captured" in json.loads(detail)["reason"]


def test_refunds_and_cancellations_stay_in_shopify(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=SHOPIFY_FLOW)
    gid = place_order(shopify_sandbox)
    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    nodes = shopify_sandbox.order_json(DOMAIN, gid)["lineItems"]["nodes"]
    basil = str(next(node["id"] for node in nodes if node["sku"] == "BAS"))

    refund = shopify_sandbox.refund(DOMAIN, gid, {basil: 1})
    assert send(service, "refunds/create", refund).json()["status"] == "accepted"
    assert send(service, "orders/cancelled", shopify_sandbox.cancel_order(DOMAIN, gid)).is_success

    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE kind = 'order'") == 1,
        what="the order's job",
    )
    wait_idle(settings)
    assert klarna_sandbox.requests == []
    assert count(settings, "SELECT count(*) FROM order_operations") == 0
    with database(settings) as conn:
        [(state,)] = conn.execute("SELECT state FROM jobs WHERE kind = 'order'").fetchall()
        [detail] = conn.execute("SELECT detail FROM audit WHERE step = 'skip'").fetchone()
    assert state == "done"
    assert "refunded and cancelled in the storefront" in json.loads(detail)["reason"]


TRACKED = ShopOptions(payment_flow="shopify")
PAYMENT_ID = "rYj3kPq9c0vW1xZ2"


def place_tracked_order(
    shopify: ShopifySandbox, klarna: KlarnaSandbox, *, payment_id: str = PAYMENT_ID
) -> tuple[str, str]:
    """The 52.90 order of `place_order`, paid through Klarna's payments app: Shopify keeps the
    Klarna order id in its metafield, and Klarna keeps Shopify's payment id in the order's
    merchant reference. Returns (Shopify order gid, Klarna order id)."""
    placed = klarna.create_order(order_amount=5290, merchant_reference1=payment_id)
    gid = shopify.add_order(
        DOMAIN,
        [
            Line(
                "Tomatoes", "20.00", quantity=2, sku="TOM", discounts=["2.00"],
                taxes=[Tax("0.07", "2.49")],
            ),
            Line("Basil", "10.00", sku="BAS", taxes=[Tax("0.07", "0.65")]),
        ],
        shipping=[ShippingLine("Standard", "4.90", taxes=[Tax("0.19", "0.78")])],
        metafields={("klarna", "order_id"): placed.order_id},
        transactions=[Transaction("Klarna", multi_capturable=True, payment_id=PAYMENT_ID)],
    )  # fmt: skip
    return gid, placed.order_id


def klarna_captures_too(
    klarna: KlarnaSandbox, order_id: str, *amounts: int, ago: timedelta = timedelta(0)
) -> None:
    """What Klarna's payments app does when Shopify asks it to capture: a capture at Klarna
    (made `ago` before now)."""
    with klarna.lock:
        order = klarna.orders[order_id]
        for amount in amounts:
            order.captures.append(
                SandboxCapture(
                    capture_id=str(uuid.uuid4()),
                    captured_amount=amount,
                    captured_at=klarna.now() - ago,
                    klarna_reference=f"K{len(order.captures)}",
                )
            )
            order.captured_amount += amount


def not_added(settings: Settings) -> list[str]:
    with database(settings) as conn:
        rows = conn.execute(
            "SELECT detail FROM audit WHERE step = 'shipping_info' AND outcome = 'not_added'"
        ).fetchall()
    return [json.loads(detail)["reason"] for (detail,) in rows]


def test_tracking_goes_to_the_klarna_capture_shopifys_capture_produced(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=TRACKED)
    gid, klarna_id = place_tracked_order(shopify_sandbox, klarna_sandbox)
    # A capture of another amount made then is not this shipment's.
    klarna_captures_too(klarna_sandbox, klarna_id, 5290, 1000)
    body = shopify_sandbox.fulfill(
        DOMAIN, gid, tracking_company="DHL", tracking_numbers=["00340434161094042557"]
    )
    assert send(service, "fulfillments/create", body).is_success
    ours = klarna_sandbox.orders[klarna_id].captures[0]
    wait_until(lambda: ours.shipping_info != [], what="the tracking at Klarna")
    assert [(i.shipping_company, i.tracking_number) for i in ours.shipping_info] == [
        ("dhl", "00340434161094042557")
    ]
    assert klarna_sandbox.orders[klarna_id].captures[1].shipping_info == []
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]
    # Klarna was read and given tracking: no capture, refund or cancel.
    assert {(r.method, r.path.endswith("/shipping-info")) for r in klarna_sandbox.requests} == {
        ("GET", False),
        ("POST", True),
    }
    wait_idle(settings)
    assert not_added(settings) == []


def test_two_klarna_captures_of_the_amount_are_no_guess_and_the_shipment_says_so(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=TRACKED)
    gid, klarna_id = place_tracked_order(shopify_sandbox, klarna_sandbox)
    klarna_captures_too(klarna_sandbox, klarna_id, 5290, 5290)
    body = shopify_sandbox.fulfill(DOMAIN, gid, tracking_company="DHL", tracking_numbers=["1"])
    assert send(service, "fulfillments/create", body).is_success
    wait_until(lambda: not_added(settings) != [], what="the note")
    wait_idle(settings)
    assert not_added(settings) == [
        f"Klarna order {klarna_id} has 2 captures of this shipment's amount made when Shopify "
        "captured it: which one is this shipment's cannot be told"
    ]
    assert all(c.shipping_info == [] for c in klarna_sandbox.orders[klarna_id].captures)
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]


def test_a_klarna_order_that_is_not_the_payments_gets_no_tracking_and_the_shipment_says_so(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=TRACKED)
    gid, klarna_id = place_tracked_order(shopify_sandbox, klarna_sandbox, payment_id="other")
    klarna_captures_too(klarna_sandbox, klarna_id, 5290)
    body = shopify_sandbox.fulfill(DOMAIN, gid, tracking_company="DHL", tracking_numbers=["1"])
    assert send(service, "fulfillments/create", body).is_success
    wait_until(lambda: not_added(settings) != [], what="the note")
    wait_idle(settings)
    assert not_added(settings) == [
        f"Klarna order {klarna_id} does not name Shopify's payment id {PAYMENT_ID} in its "
        "merchant references: it is not this order's"
    ]
    assert klarna_sandbox.orders[klarna_id].captures[0].shipping_info == []


def test_an_order_without_a_klarna_order_id_gets_no_tracking_and_the_shipment_says_so(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=TRACKED)
    gid = place_order(shopify_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid, tracking_company="DHL", tracking_numbers=["1"])
    assert send(service, "fulfillments/create", body).is_success
    wait_until(lambda: not_added(settings) != [], what="the note")
    wait_idle(settings)
    assert not_added(settings) == [
        "no Klarna order id is kept on this order in Shopify, where the settings page says to "
        "read it: the Klarna order cannot be found"
    ]
    assert captures(shopify_sandbox, gid) == [("SUCCESS", "52.90")]
    assert klarna_sandbox.requests == []
    # The fulfilment's next update is no second note.
    assert send(service, "fulfillments/update", body).is_success
    wait_until(lambda: count(settings, "SELECT count(*) FROM deliveries") == 2, what="it")
    wait_idle(settings)
    assert len(not_added(settings)) == 1


def test_a_klarna_capture_of_the_amount_made_before_the_shipment_is_not_its(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=TRACKED)
    gid, klarna_id = place_tracked_order(shopify_sandbox, klarna_sandbox)
    klarna_captures_too(klarna_sandbox, klarna_id, 5290, ago=timedelta(hours=1))
    body = shopify_sandbox.fulfill(DOMAIN, gid, tracking_company="DHL", tracking_numbers=["1"])
    assert send(service, "fulfillments/create", body).is_success
    wait_until(lambda: not_added(settings) != [], what="the note")
    wait_idle(settings)
    assert not_added(settings) == [
        f"Klarna order {klarna_id} has no capture of this shipment's amount made when Shopify "
        "captured it"
    ]
    assert klarna_sandbox.orders[klarna_id].captures[0].shipping_info == []
