"""serve, worker, migrate: the processes of a deployment, and the schema they work on."""

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from plugin import about, metrics, retention, server
from plugin.cli import arguments, running
from plugin.config import PREFIX, ConfigError, Settings, record_serve_url
from plugin.logs import configure_logging
from plugin.service import Service, open_service
from plugin.store import open_store


def add_commands(commands: Any) -> None:
    serve = arguments.command(
        commands,
        "serve",
        "receive webhooks and serve the merchants' pages, with KLARNA_CAPTURE_WORKERS workers "
        "in the same process",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument(
        "--port", type=arguments.port, default=8000, help="the port to listen on (0: any free one)"
    )
    serve.set_defaults(run=_serve)

    worker = arguments.command(commands, "worker", "run workers only, beside one or more serve")
    worker.set_defaults(run=_worker)

    migrate = arguments.command(commands, "migrate", "bring the database schema up to date")
    migrate.set_defaults(run=lambda args: running.run(_migrate))


def _serve(args: argparse.Namespace) -> int:
    from plugin.app import create_app

    settings = running.settings()
    configure_logging(settings.log_level)
    sockets = server.listen(args.host, args.port)
    try:
        # The store is reached (and migrated) before anything starts, so that a database that
        # cannot be reached is one line and an exit, like a port that is taken.
        asyncio.run(_migrate_store(settings))
        settings = record_serve_url(settings, _reachable(server.url_of(sockets[0])))
        app = create_app(
            settings,
            lease_seconds=settings.queue.lease_seconds,
            poll_seconds=settings.queue.poll_ms / 1000,
        )
        _freeze_startup_objects()
        _hand_off_the_gil_sooner(settings.database.url)

        def stop_workers() -> None:
            # At the signal, not after the open requests: the workers stop claiming, cancel the
            # jobs in flight and hand them back while the last answers are sent.
            service: Service | None = getattr(app.state, "service", None)
            if service is not None:
                service.worker.stop()

        with metrics.listener(settings.metrics_address):
            server.Server(
                server.config(
                    app,
                    host=args.host,
                    port=args.port,
                    trusted_proxies=settings.web.trusted_proxies,
                    timeout_graceful_shutdown=10,
                ),
                announce=lambda: _say_where(settings, sockets),
                on_exit=stop_workers,
            ).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def _say_where(settings: Settings, sockets: Sequence[socket.socket]) -> None:
    """What `serve` says once it answers: where it listens, and the public URL."""
    print(
        f"klarna-capture {about.VERSION} listening on "
        f"{', '.join(server.url_of(sock) for sock in sockets)}; public URL "
        f"{settings.web.public_url} ({settings.queue.workers} workers, database "
        f"{settings.database.url.split(':', 1)[0]})",
        file=sys.stderr,
        flush=True,
    )
    if not settings.web.public_url_configured:
        print(
            f"klarna-capture: {PREFIX}PUBLIC_URL is unset, so webhook and sign-in URLs use the "
            "URL above (so do the other commands with this data directory); set it to the "
            "address storefronts and merchants reach this service at",
            file=sys.stderr,
            flush=True,
        )


def _reachable(url: str) -> str:
    """A URL this machine reaches a listener on: a wildcard address becomes loopback."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


async def _migrate_store(settings: Settings) -> int:
    store = open_store(
        settings.database.url, pool_size=2, timeout=settings.database.timeout_seconds
    )
    try:
        return await store.migrate()
    finally:
        await store.close()


def _worker(args: argparse.Namespace) -> int:
    settings = running.settings()
    configure_logging(settings.log_level)
    if settings.queue.workers < 1:
        raise ConfigError("KLARNA_CAPTURE_WORKERS must be at least 1 for `klarna-capture worker`")

    async def main() -> int:
        async with open_service(
            settings,
            lease_seconds=settings.queue.lease_seconds,
            poll_seconds=settings.queue.poll_ms / 1000,
        ) as service:
            task = asyncio.ensure_future(service.worker.run())
            if metrics.serving():  # no listener, nobody to count jobs for
                counts = asyncio.ensure_future(metrics.refresh_job_counts(service.store.job_counts))
                task.add_done_callback(lambda _: counts.cancel())
            if settings.retention.prune_interval_seconds:
                pruning = asyncio.ensure_future(
                    retention.prune_forever(
                        service.store,
                        retention.Retention.of(settings),
                        settings.retention.prune_interval_seconds,
                    )
                )
                task.add_done_callback(lambda _: pruning.cancel())
            if settings.queue.keep_alive_interval_seconds:
                keeping = asyncio.ensure_future(service.keep_alive())
                task.add_done_callback(lambda _: keeping.cancel())
            if settings.mail.enabled:
                alerting = asyncio.ensure_future(service.failure_alerts())
                task.add_done_callback(lambda _: alerting.cancel())
            loop = asyncio.get_running_loop()
            # Stopped, not cancelled: the running jobs are handed back before the exit.
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, service.worker.stop)
            print(
                f"klarna-capture worker running ({settings.queue.workers} workers)",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return 0

    _freeze_startup_objects()
    with metrics.listener(settings.metrics_address):
        return _run_event_loop(main())


def _freeze_startup_objects() -> None:
    """What is loaded by now (modules, classes, functions: most of the heap) lives as long as the
    process: moved out of the garbage collector's sight, so that a full collection under load
    scans only what requests and jobs make. Measured with bench-ingest: p99 37 ms -> 18 to 25 ms,
    the difference being full collections that paused the event loop."""
    gc.collect()
    gc.freeze()


GIL_SWITCH_SECONDS = 0.0001


def _hand_off_the_gil_sooner(database_url: str) -> None:
    """On SQLite, the store's writer thread takes the GIL back after each call into SQLite; while
    the event loop is busy, each such hand-off waited up to Python's default switch interval of
    5 ms, with the writer's transaction half done. Measured with bench-ingest, side by side: on
    SQLite 2,783 to 3,088 req/s at 5 ms against 3,056 to 3,797 at 0.1 ms; on PostgreSQL, which
    has no such thread, 0.1 ms only cost (3,186 to 3,459 req/s against 2,893 to 2,907). Not for
    `worker`: bench-pipeline on SQLite showed no gain (162 and 185 captures/s at 0.1 ms, 202 and
    164 at 5 ms) for 15 % more CPU in switching."""
    if database_url.startswith("sqlite:"):
        sys.setswitchinterval(GIL_SWITCH_SECONDS)


def _run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where it is installed (as uvicorn does for `serve`): less CPU per
    network round trip than asyncio's own loop, which runs it otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _migrate(service: Service) -> int:
    print(f"schema version {await service.store.migrate()}")
    return 0
