"""The Prometheus metrics of the service, on a registry of their own rather than the global one,
served on a listener of their own: loopback by default (`KLARNA_CAPTURE_METRICS_ADDRESS`), never
on the public port. A scrape reads what is in memory and never queries the database: the job
gauges are refreshed by a task of each process every `JOB_COUNTS_SECONDS`."""

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger("plugin.metrics")

JOB_COUNTS_SECONDS = 15.0  # how stale the job gauges may be: about one scrape interval
SCRAPE_IDLE_SECONDS = 10  # a scraper's connection that sends nothing for this long is closed

DELIVERY_OUTCOMES = (
    "accepted",
    "duplicate",
    "rejected",
    "unauthorized",
    "unknown_shop",
    "too_large",
    "too_deep",
    "disconnected",
    "unavailable",
)
# "waiting": a shipment parked until its shop's Klarna credentials are saved (neither failed nor
# dead: it burns no attempt).
CAPTURE_OUTCOMES = ("captured", "already_captured", "refused", "failed", "dead", "waiting")
JOB_STATES = ("queued", "running", "done", "dead", "waiting")
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
REFUNDS = Counter(
    "klarna_capture_refunds_total",
    "Refunds by outcome (refunded, failed)",
    ["outcome"],
    registry=REGISTRY,
)
REFUNDED_AMOUNT = Counter(
    "klarna_capture_refunded_amount_minor_total",
    "Refunded amount in minor units",
    ["currency"],
    registry=REGISTRY,
)
ORDER_OPERATIONS = Counter(
    "klarna_capture_order_operations_total",
    "Cancellations, releases and extensions of Klarna orders by kind and outcome",
    ["kind", "outcome"],
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


async def refresh_job_counts(
    job_counts: Callable[[], Awaitable[Mapping[str, int]]], every: float = JOB_COUNTS_SECONDS
) -> None:
    """Keep the jobs gauge up to date from `job_counts` (the store's), every `every` seconds,
    until cancelled. A failed count (the database away) leaves the last values and is tried
    again at the next turn."""
    while True:
        try:
            set_job_counts(await job_counts())
        except Exception as exc:
            log.warning("job counts not refreshed", extra={"error": type(exc).__name__})
        await asyncio.sleep(every)


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_IDLE_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


_serving = threading.Event()


def serving() -> bool:
    """Whether this process serves its metrics (a `listener` block bound its address): only then
    is it worth counting jobs for the gauges."""
    return _serving.is_set()


@contextlib.contextmanager
def listener(address: tuple[str, int] | None) -> Iterator[None]:
    """Serve the metrics on `address` (host, port) in a thread for the block's length; None
    serves nothing. An address that cannot be bound (a second process on one machine) is a
    warning, not the end of the process: its captures matter more than its metrics."""
    if address is None:
        yield
        return
    host, port = address

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = make_server(host, port, make_wsgi_app(REGISTRY), Server, _QuietHandler)
    except OSError as exc:
        log.warning(
            "metrics not served: KLARNA_CAPTURE_METRICS_ADDRESS cannot be bound",
            extra={"address": f"{host}:{port}", "error": exc.strerror},
        )
        yield
        return
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    _serving.set()
    try:
        yield
    finally:
        _serving.clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
