"""How the pipeline's jobs fail, on each store, against Klarna's sandbox over HTTP and a status
URL at the network edge: each failure becomes a JobFailure with Klarna's (or the planner's, or the
status URL's) code and the right retry, and the fulfilment task's hook writes it on the
shipment's trail and reports it to the shop once."""

import json

import httpx2
import msgspec
import pytest

from plugin.config import Settings
from plugin.pipeline import Pipeline
from plugin.sandbox.klarna import FaultSettings, FraudStatus, KlarnaSandbox
from plugin.shops import KLARNA_NOT_CONFIGURED, Shops
from plugin.store import NewCallback, Store
from plugin.store.records import KLARNA_CREDENTIALS, Job
from plugin.worker import JobFailure
from tests.helpers import TOMATOES, shipment
from tests.pipeline.conftest import build_pipeline, claim, receive, standard_shop

pytestmark = pytest.mark.anyio
FULFILLMENT = "1001-F1"
STATUS_URL = "https://status.example/klarna"


async def failure_of(pipeline: Pipeline, job: Job) -> JobFailure:
    with pytest.raises(JobFailure) as failed:
        await pipeline.tasks["fulfillment"].run(job)
    return failed.value


def data(callback: NewCallback | None) -> dict[str, object]:
    assert callback is not None
    assert callback.event_type == "capture.failed"
    event: dict[str, object] = msgspec.json.decode(callback.payload)["data"]
    return event


async def test_klarna_unavailable_is_retried_and_reported_once(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops, status_url=STATUS_URL)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id))
    job = await claim(store)
    klarna_sandbox.set_faults(FaultSettings(fail_next=1, fail_status=503))

    failure = await failure_of(pipeline, job)

    assert failure.retryable
    assert failure.waits_for is None
    assert (failure.error.step, failure.error.status) == ("plan", 503)
    # The hook: on the trail, and reported at the first attempt only.
    hook = pipeline.tasks["fulfillment"].failed
    assert hook is not None
    reported = data(await hook(job, failure, "retrying"))
    assert reported["retrying"] is True
    assert reported["error_code"] == failure.error.error_code
    assert reported["correlation_id"] == failure.error.correlation_id
    assert (reported["order_id"], reported["fulfillment_id"]) == ("1001", FULFILLMENT)
    assert reported["klarna_order_id"] == placed.order_id
    again = msgspec.structs.replace(job, attempts=1)
    assert await hook(again, failure, "retrying") is None
    assert data(await hook(again, failure, "dead"))["retrying"] is False
    trail = await store.audit_trail(shop.id, FULFILLMENT)
    assert [(e.step, e.outcome) for e in trail] == [
        ("plan", "failed, will retry"),
        ("plan", "failed, will retry"),
        ("plan", "dead"),
    ]
    assert json.loads(trail[0].detail)["error_code"] == failure.error.error_code


@pytest.mark.parametrize(("fraud_status", "retryable"), [("PENDING", True), ("REJECTED", False)])
async def test_a_refused_capture_says_whether_it_may_pass_later(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    klarna_sandbox: KlarnaSandbox,
    fraud_status: FraudStatus,
    retryable: bool,
) -> None:
    shop = await standard_shop(shops, status_url=STATUS_URL)
    placed = klarna_sandbox.create_order(
        order_amount=6000,
        order_lines=[TOMATOES],
        fraud_status=fraud_status,
    )
    await receive(store, shop, shipment(placed.order_id))

    failure = await failure_of(pipeline, await claim(store))

    code = f"FRAUD_{fraud_status}"
    assert (failure.error.step, failure.error.error_code) == ("plan", code)
    assert failure.retryable is retryable
    trail = await store.audit_trail(shop.id, FULFILLMENT)
    assert [(e.step, e.outcome) for e in trail] == [("plan", "refused")]
    assert klarna_sandbox.orders[placed.order_id].captures == []


async def test_refused_credentials_wait_for_the_merchant(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops, klarna_password="not-the-password", status_url=STATUS_URL)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id))
    job = await claim(store)

    failure = await failure_of(pipeline, job)

    assert failure.waits_for == KLARNA_CREDENTIALS
    assert (failure.error.error_code, failure.error.status) == ("UNAUTHORIZED", 401)
    hook = pipeline.tasks["fulfillment"].failed
    assert hook is not None
    assert data(await hook(job, failure, "waiting"))["retrying"] is True
    trail = await store.audit_trail(shop.id, FULFILLMENT)
    assert [(e.step, e.outcome) for e in trail] == [("plan", "waiting for klarna credentials")]


async def test_a_shop_without_klarna_credentials_waits_for_them(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops, klarna_username="", klarna_password="")
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id))

    failure = await failure_of(pipeline, await claim(store))

    assert failure.waits_for == KLARNA_CREDENTIALS
    assert (failure.error.step, failure.error.error_code) == ("plan", KLARNA_NOT_CONFIGURED)
    assert failure.retryable
    assert klarna_sandbox.requests == []


async def test_a_status_url_that_refuses_the_event_fails_the_callback_for_a_retry(
    store: Store,
    shops: Shops,
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    posted: list[httpx2.Request] = []

    def status_url(request: httpx2.Request) -> httpx2.Response:
        posted.append(request)
        return httpx2.Response(500)

    shop = await standard_shop(shops, status_url=STATUS_URL)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id, complete=True))
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        httpx2.AsyncClient(transport=httpx2.MockTransport(status_url)) as status_http,
    ):
        pipeline = build_pipeline(store, shops, settings, http, status_http=status_http)
        await pipeline.tasks["fulfillment"].run(await claim(store))
        job = await claim(store, "callback")
        with pytest.raises(JobFailure) as failed:
            await pipeline.tasks["callback"].run(job)

    assert [str(request.url) for request in posted] == [STATUS_URL]
    assert posted[0].headers["webhook-id"].startswith("msg_")
    error = failed.value.error
    assert (error.step, error.error_code, error.status) == ("report", "HTTP_500", 500)
    assert failed.value.retryable
    assert pipeline.tasks["callback"].failed is None  # a callback's failure is no shipment's
