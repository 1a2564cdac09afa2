"""The baseline of scripts/bench-ingest: a bare Starlette endpoint on the webhook route that reads
the body and answers 200, served by uvicorn as `klarna-capture serve` serves the service (one
process, loopback, the same HTTP protocol and limits, no access log).

    python scripts/bare_app.py --port 8200
"""

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugin import server


async def receive(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/webhooks/standard/{shop_id}", receive, methods=["POST"]),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.Server(server.config(app, host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
