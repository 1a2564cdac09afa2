"""The Prometheus metrics of the service, on a registry of their own rather than the global one."""

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

DELIVERY_OUTCOMES = (
    "accepted",
    "duplicate",
    "rejected",
    "unauthorized",
    "unknown_shop",
    "too_large",
)
CAPTURE_OUTCOMES = ("captured", "already_captured", "refused", "failed", "dead")
JOB_STATES = ("queued", "running", "done", "dead")
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

REGISTRY = CollectorRegistry()

DELIVERIES = Counter(
    "klarna_capture_deliveries_total",
    "Webhook deliveries by platform and outcome",
    ["platform", "outcome"],
    registry=REGISTRY,
)
CAPTURES = Counter(
    "klarna_capture_captures_total",
    "Capture attempts by outcome",
    ["outcome"],
    registry=REGISTRY,
)
CAPTURED_AMOUNT = Counter(
    "klarna_capture_captured_amount_minor_total",
    "Captured amount in minor units",
    ["currency"],
    registry=REGISTRY,
)
JOB_LAG = Histogram(
    "klarna_capture_job_lag_seconds",
    "Time from a job being due to being claimed",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
KLARNA_LATENCY = Histogram(
    "klarna_capture_klarna_request_seconds",
    "Klarna OM call latency",
    ["operation", "status"],
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
JOBS = Gauge("klarna_capture_jobs", "Jobs by state", ["state"], registry=REGISTRY)

# Series that exist from the start, so that rate() and alerts see a 0 before the first event.
for _outcome in CAPTURE_OUTCOMES:
    CAPTURES.labels(_outcome)
for _state in JOB_STATES:
    JOBS.labels(_state)
_job_states_seen = set(JOB_STATES)


def set_job_counts(counts: Mapping[str, int]) -> None:
    """Set the jobs gauge from a count per state; every state seen before but absent here is 0."""
    _job_states_seen.update(counts)
    for state in tuple(_job_states_seen):
        JOBS.labels(state).set(counts.get(state, 0))


def render() -> tuple[bytes, str]:
    """The exposition text of every metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
