"""sandbox (klarna, shopify, woocommerce, bigcommerce): the simulators in plugin/sandbox/ of the
systems this service talks to, each run alone for demos and manual tests."""

import argparse
import sys
from typing import Any

import uvicorn

from plugin.cli import arguments


def add_commands(commands: Any) -> None:
    sandbox = arguments.command(commands, "sandbox", "run a simulator of a system we talk to")
    simulators = arguments.commands(sandbox, "simulator", "SIMULATOR")
    klarna = arguments.command(simulators, "klarna", "run Klarna's Order management API, in memory")
    klarna.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    klarna.add_argument("--port", type=arguments.port, default=8100, help="the port to listen on")
    klarna.add_argument(
        "--username", help="the API username it accepts (default: the sandbox's own)"
    )
    klarna.add_argument(
        "--password", help="the API password it accepts (default: the sandbox's own)"
    )
    klarna.set_defaults(run=_sandbox_klarna)
    for name, what, port, run in (
        ("shopify", "run Shopify's Admin API and OAuth, in memory", 8200, _sandbox_shopify),
        ("woocommerce", "run a WooCommerce site's REST API, in memory", 8300, _sandbox_woocommerce),
        (
            "bigcommerce",
            "run BigCommerce's REST API and OAuth, in memory",
            8400,
            _sandbox_bigcommerce,
        ),
    ):
        simulator = arguments.command(simulators, name, what)
        simulator.add_argument("--host", default="127.0.0.1", help="the address to listen on")
        simulator.add_argument(
            "--port", type=arguments.port, default=port, help="the port to listen on"
        )
        simulator.set_defaults(run=run)


def _sandbox_klarna(args: argparse.Namespace) -> int:
    from plugin.sandbox import klarna

    if (args.username is None) != (args.password is None):
        print("klarna-capture: give --username and --password together", file=sys.stderr)
        return 2
    username = args.username or klarna.DEFAULT_USERNAME
    password = args.password or klarna.DEFAULT_PASSWORD
    app = klarna.create_app(credentials={username: password})
    print(
        f"Klarna sandbox on http://{args.host}:{args.port} (API username {username!r}); "
        f"set KLARNA_CAPTURE_KLARNA_URL to that URL",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _sandbox_shopify(args: argparse.Namespace) -> int:
    from plugin.sandbox import shopify

    base = f"http://{args.host}:{args.port}"
    print(
        f"Shopify sandbox on {base}; set KLARNA_CAPTURE_SHOPIFY_ADMIN_URL={base}/shops/{{shop}}, "
        f"KLARNA_CAPTURE_SHOPIFY_CLIENT_ID={shopify.DEFAULT_CLIENT_ID} and "
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET to its published client secret "
        "(plugin/sandbox/shopify.py, DEFAULT_CLIENT_SECRET)",
        flush=True,
    )
    uvicorn.run(shopify.create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def _sandbox_woocommerce(args: argparse.Namespace) -> int:
    from plugin.sandbox import woocommerce as sandbox

    base = f"http://{args.host}:{args.port}"
    state = sandbox.WooCommerceSandbox(base_url=base)
    site = state.add_site(sandbox.DEFAULT_SITE)
    print(
        f"WooCommerce sandbox on {base}: a site at {site} whose REST API key is "
        f"{sandbox.DEFAULT_CONSUMER_KEY} with its published secret "
        "(plugin/sandbox/woocommerce.py, DEFAULT_CONSUMER_SECRET)",
        flush=True,
    )
    uvicorn.run(sandbox.create_app(state), host=args.host, port=args.port, log_level="warning")
    return 0


def _sandbox_bigcommerce(args: argparse.Namespace) -> int:
    from plugin.sandbox import bigcommerce

    base = f"http://{args.host}:{args.port}"
    print(
        f"BigCommerce sandbox on {base}; set KLARNA_CAPTURE_BIGCOMMERCE_API_URL and "
        f"KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL to it, KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID="
        f"{bigcommerce.DEFAULT_CLIENT_ID} and KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET to its "
        "published client secret (plugin/sandbox/bigcommerce.py, DEFAULT_CLIENT_SECRET)",
        flush=True,
    )
    uvicorn.run(bigcommerce.create_app(), host=args.host, port=args.port, log_level="warning")
    return 0
