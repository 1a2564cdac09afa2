"""Builds the Starlette app: routes, and a lifespan that opens the store, the HTTP clients and
runs the workers beside the webhook receiver. The metrics are not among the routes: they have a
listener of their own (plugin/metrics.py), which `serve` starts."""

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugin import metrics, retention
from plugin.config import Settings
from plugin.platforms import registry
from plugin.service import Service, open_service
from plugin.store import StoreUnavailable
from plugin.web import routes as web
from plugin.web.auth import Auth
from plugin.webhooks import answer

log = logging.getLogger("plugin.app")

# What a request that needs the database answers while it is away: try again in this long. A
# storefront redelivers the webhook later (on a schedule of its own, if it ignores the header).
RETRY_AFTER_SECONDS = 10
_RETRY_LATER = {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        await service.store.ping()
    except Exception as exc:
        error = type(exc).__name__
        return JSONResponse({"status": "unavailable", "error": error}, 503, _RETRY_LATER)
    return JSONResponse({"status": "ready"})


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """Any request that needed the database while it was away (whichever call found it so): 503
    with Retry-After, never a 500, so that a storefront delivers the webhook again; counted as an
    `unavailable` delivery of its platform."""
    log.warning(
        "database unavailable; answered 503", extra={"path": request.url.path, "error": str(exc)}
    )
    parts = request.url.path.split("/")
    if len(parts) > 2 and parts[1] == "webhooks" and parts[2] in registry.PLATFORMS:
        response = answer(503, parts[2], "unavailable", error="database unavailable, try again")
    else:
        response = JSONResponse({"status": "unavailable"}, 503)
    response.headers.update(_RETRY_LATER)
    return response


def create_app(settings: Settings, **service_options: Any) -> Starlette:
    """The service; `service_options` go to `open_service` (tests shorten leases and backoff)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_service(settings, **service_options) as service:
            app.state.service = service
            async with anyio.create_task_group() as group:
                if settings.queue.workers:
                    group.start_soon(service.worker.run)
                    if (
                        settings.retention.prune_interval_seconds
                    ):  # pruning runs where the workers do
                        group.start_soon(
                            retention.prune_forever,
                            service.store,
                            retention.Retention.of(settings),
                            settings.retention.prune_interval_seconds,
                        )
                    if settings.queue.keep_alive_interval_seconds:
                        group.start_soon(service.keep_alive)
                    if settings.mail.enabled:  # alerts go out where the workers run
                        group.start_soon(service.failure_alerts)
                if metrics.serving():  # no listener, nobody to count jobs for
                    group.start_soon(metrics.refresh_job_counts, service.store.job_counts)
                yield
                group.cancel_scope.cancel()

    app = Starlette(
        routes=[
            *(route for platform in registry.PLATFORMS.values() for route in platform.routes()),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *web.routes(),
        ],
        middleware=[Middleware(web.SecurityHeaders)],
        exception_handlers={StoreUnavailable: store_unavailable},
        lifespan=lifespan,
    )
    # Sign-in is the web layer's: the service it runs knows nothing of sessions or links.
    app.state.auth = Auth(settings.secret_keys)
    return app
