import asyncio
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx2
import pytest
from prometheus_client import REGISTRY as GLOBAL_REGISTRY
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from plugin import metrics
from plugin.metrics import (
    CAPTURED_AMOUNT,
    CAPTURES,
    DELIVERIES,
    JOB_LAG,
    KLARNA_LATENCY,
    REGISTRY,
    listener,
    refresh_job_counts,
    render,
    serving,
    set_job_counts,
)
from plugin.store.sqlite import SqliteStore
from tests.helpers import Server, free_port, wait_until
from tests.store.test_store import add_shop
from tests.web.support import cli_env, page_settings, running


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(name: str, **labels: str) -> float:
    return samples().get((name, frozenset(labels.items())), 0.0)


def test_render_gives_the_exposition_text_and_its_content_type() -> None:
    body, content_type = render()
    assert content_type.startswith("text/plain; version=")
    families = {
        family.name: family.type for family in text_string_to_metric_families(body.decode())
    }
    expected = {
        "klarna_capture_deliveries": "counter",
        "klarna_capture_captures": "counter",
        "klarna_capture_captured_amount_minor": "counter",
        "klarna_capture_job_lag_seconds": "histogram",
        "klarna_capture_klarna_request_seconds": "histogram",
        "klarna_capture_jobs": "gauge",
    }
    assert expected.items() <= families.items()


def test_counters_render_with_their_labels() -> None:
    accepted = value("klarna_capture_deliveries_total", platform="shopify", outcome="accepted")
    captured = value("klarna_capture_captures_total", outcome="captured")
    sek = value("klarna_capture_captured_amount_minor_total", currency="SEK")

    DELIVERIES.labels(platform="shopify", outcome="accepted").inc()
    CAPTURES.labels(outcome="captured").inc()
    CAPTURED_AMOUNT.labels(currency="SEK").inc(12_345)

    assert (
        value("klarna_capture_deliveries_total", platform="shopify", outcome="accepted")
        == accepted + 1
    )
    assert value("klarna_capture_captures_total", outcome="captured") == captured + 1
    assert value("klarna_capture_captured_amount_minor_total", currency="SEK") == sek + 12_345


def test_every_capture_outcome_exists_before_the_first_event() -> None:
    rendered = samples()
    for outcome in metrics.CAPTURE_OUTCOMES:
        assert ("klarna_capture_captures_total", frozenset({("outcome", outcome)})) in rendered


def test_histograms_count_into_their_buckets() -> None:
    count = value("klarna_capture_job_lag_seconds_count")
    under_half_second = value("klarna_capture_job_lag_seconds_bucket", le="0.5")
    JOB_LAG.observe(0.3)
    assert value("klarna_capture_job_lag_seconds_count") == count + 1
    assert value("klarna_capture_job_lag_seconds_bucket", le="0.5") == under_half_second + 1

    labels = {"operation": "capture", "status": "201"}
    slow = value("klarna_capture_klarna_request_seconds_bucket", le="300.0", **labels)
    KLARNA_LATENCY.labels(**labels).observe(42.0)
    assert value("klarna_capture_klarna_request_seconds_bucket", le="300.0", **labels) == slow + 1
    assert value("klarna_capture_klarna_request_seconds_bucket", le="30.0", **labels) == 0


def test_set_job_counts_sets_given_states_and_zeroes_the_rest() -> None:
    set_job_counts({"queued": 3, "running": 2, "done": 40, "dead": 1})
    set_job_counts({"queued": 5, "retrying": 4})
    assert value("klarna_capture_jobs", state="queued") == 5
    assert value("klarna_capture_jobs", state="retrying") == 4
    for state in ("running", "done", "dead"):
        assert value("klarna_capture_jobs", state=state) == 0

    set_job_counts({})
    assert value("klarna_capture_jobs", state="retrying") == 0
    assert value("klarna_capture_jobs", state="queued") == 0


def test_the_global_registry_is_left_alone() -> None:
    assert REGISTRY is not GLOBAL_REGISTRY
    assert b"klarna_capture" not in generate_latest(GLOBAL_REGISTRY)


def join(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def scrape(address: tuple[str, int]) -> str:
    answer = httpx2.get(f"http://{address[0]}:{address[1]}/metrics", timeout=30)
    assert answer.status_code == 200
    return answer.text


def gauge(text: str, state: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "klarna_capture_jobs" and sample.labels == {"state": state}:
                return sample.value
    raise AssertionError(f"no jobs gauge for {state}")


class CountedStore(SqliteStore):
    """The real SQLite store, counting the job counts asked of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.counted = 0

    async def job_counts(self) -> Mapping[str, int]:
        self.counted += 1
        return await super().job_counts()


@pytest.mark.anyio
async def test_gauges_refresh_in_the_background_and_a_scrape_never_asks_the_store(
    tmp_path: Path,
) -> None:
    store = CountedStore(tmp_path / "metrics.db")
    await store.migrate()
    address = ("127.0.0.1", free_port())
    shop = "shop_0123456789ab"
    await add_shop(store, shop)
    set_job_counts({})
    with listener(address):
        refreshing = asyncio.ensure_future(refresh_job_counts(store.job_counts, every=0.05))
        try:
            await store.record_delivery(
                shop,
                "msg_1",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id="F1",
                rejected=None,
                now=time.time(),
            )
            # No scrape meanwhile: the task alone brings the gauge up to date.
            queued = lambda: value("klarna_capture_jobs", state="queued") == 1  # noqa: E731
            await asyncio.to_thread(wait_until, queued, what="for the gauge to count the job")
        finally:
            refreshing.cancel()
        await store.close()  # the database is gone: scrapes still answer, from memory

        asked = store.counted
        for _ in range(5):
            text = await asyncio.to_thread(scrape, address)
            assert gauge(text, "queued") == 1
        assert store.counted == asked


def test_the_listener_serves_the_metrics_on_its_own_address_and_stops_with_its_block() -> None:
    address = ("127.0.0.1", free_port())
    with listener(address):
        assert "klarna_capture_deliveries_total" in scrape(address)
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"http://{address[0]}:{address[1]}/metrics", timeout=5)


def test_an_address_in_use_is_a_warning_and_no_listener(caplog: pytest.LogCaptureFixture) -> None:
    address = ("127.0.0.1", free_port())
    assert not serving()
    with listener(address):
        assert serving()
        with listener(address):
            assert "klarna_capture" in scrape(address)
    assert "cannot be bound" in caplog.text
    assert not serving()
    with listener(None):
        assert not serving()  # so no process counts jobs for gauges nobody can read


def test_the_public_app_has_no_metrics(tmp_path: Path, klarna_url: str) -> None:
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        assert site.client.get("/metrics").status_code == 404
        assert site.client.get("/healthz").status_code == 200


def test_serve_and_worker_serve_their_metrics_on_the_metrics_address(
    tmp_path: Path, klarna_url: str
) -> None:
    settings = page_settings(tmp_path, klarna_url)
    serve_address, worker_address = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    serve = Server(cli_env(settings, KLARNA_CAPTURE_METRICS_ADDRESS=join(serve_address)))
    worker = subprocess.Popen(
        [sys.executable, "-m", "plugin", "worker"],
        env=cli_env(settings, KLARNA_CAPTURE_METRICS_ADDRESS=join(worker_address)),
    )
    try:
        assert httpx2.get(f"{serve.url}/metrics", timeout=30).status_code == 404
        assert "klarna_capture_jobs" in scrape(serve_address)

        def worker_serves() -> bool:
            try:
                return "klarna_capture_jobs" in scrape(worker_address)
            except httpx2.TransportError:
                assert worker.poll() is None, "the worker exited"
                return False

        wait_until(worker_serves, what="for the worker's metrics")
    finally:
        serve.stop()
        worker.terminate()
        worker.wait(timeout=30)
