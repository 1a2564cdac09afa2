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
    render,
    set_job_counts,
)


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
