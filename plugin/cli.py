"""The `klarna-capture` command: serve, worker, migrate, shops, jobs, deliveries, prune,
sandboxes."""

import argparse
import asyncio
import contextlib
import gc
import getpass
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
import uvicorn

from plugin import about, metrics, retention, server
from plugin.capture import DESCRIPTION_FIELDS, description_problem
from plugin.config import (
    PREFIX,
    ConfigError,
    Settings,
    ensure_secret_keys,
    load_settings,
    record_serve_url,
    secure_data_dir,
    unknown_variables,
    with_serve_url,
)
from plugin.credentials import check_credentials
from plugin.logs import configure_logging
from plugin.outbound import AddressGuard, url_problem
from plugin.platforms import registry
from plugin.platforms.bigcommerce import install as bigcommerce_web
from plugin.platforms.bigcommerce import mapping as bigcommerce
from plugin.platforms.bigcommerce.api import BigCommerceError
from plugin.platforms.woocommerce import mapping as woocommerce
from plugin.service import Service, open_service
from plugin.store import ShopChanges, StoreUnavailable, open_store
from plugin.store.records import KLARNA_CREDENTIALS, Job, Shop, ShopOptions
from plugin.web.auth import Auth

REGIONS = ("eu", "na", "oc")
ENVIRONMENTS = ("live", "playground")
MAX_LIMIT = 10_000  # rows a list command prints at most


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"klarna-capture: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"klarna-capture: {exc} ({PREFIX}DATABASE_URL)", file=sys.stderr)
        return 1
    except server.CannotListen as exc:
        print(f"klarna-capture: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


def _commands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar)


def _command(commands: Any, name: str, what: str, **options: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help starts by saying what it does."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=what,
        description=what[0].upper() + what[1:] + ".",
        formatter_class=_Help,
        **options,
    )
    return parser


def _number(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        if text.isascii() and text.isdigit() and low <= int(text) <= high:
            return int(text)
        raise argparse.ArgumentTypeError(f"{what} must be a whole number from {low} to {high}")

    return parse


_port = _number(0, 65535, "a port")
_limit = _number(1, MAX_LIMIT, "the limit")


def _listing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array of objects")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klarna-capture", description=__doc__, formatter_class=_Help
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {about.VERSION}")
    commands = _commands(parser, "command", "COMMAND")

    serve = _command(
        commands,
        "serve",
        "receive webhooks and serve the merchants' pages, with KLARNA_CAPTURE_WORKERS workers "
        "in the same process",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument(
        "--port", type=_port, default=8000, help="the port to listen on (0: any free one)"
    )
    serve.set_defaults(run=_serve)

    worker = _command(commands, "worker", "run workers only, beside one or more serve")
    worker.set_defaults(run=_worker)

    migrate = _command(commands, "migrate", "bring the database schema up to date")
    migrate.set_defaults(run=lambda args: _run(_migrate))

    shop = _command(
        commands,
        "shop",
        "add, list, show, rotate the secret of, remove shops, set their Klarna keys",
    )
    shops = _commands(shop, "shop_command", "SHOP_COMMAND")
    add = _command(
        shops, "add", "create a shop; prints its id, webhook URL and secret", allow_abbrev=False
    )
    add.add_argument(
        "--platform",
        choices=["standard", woocommerce.NAME],
        default="standard",
        help="the storefront that sends its shipments",
    )
    add.add_argument("--name", required=True, help="the shop's name, as the merchant knows it")
    add.add_argument(
        "--klarna-region", choices=REGIONS, required=True, help="the Klarna account's region"
    )
    add.add_argument(
        "--klarna-environment",
        choices=ENVIRONMENTS,
        required=True,
        help="live, or playground (Klarna's test environment)",
    )
    add.add_argument("--klarna-username", required=True, help="the Klarna API username")
    add.add_argument(
        "--klarna-password-stdin",
        action="store_true",
        help="read the Klarna API password from standard input (never from the command line); "
        "required unless run at a terminal, which asks for it",
    )
    add.add_argument("--status-url", help="where capture outcomes are posted, signed")
    add.add_argument("--site-url", help="woocommerce: the site's address, https://...")
    add.add_argument("--consumer-key", help="woocommerce: the REST API key's consumer key (ck_...)")
    add.add_argument(
        "--consumer-secret-stdin",
        action="store_true",
        help="woocommerce: read the consumer secret from standard input (after the Klarna "
        "password, when both are read from it); required with --platform woocommerce unless "
        "run at a terminal, which asks for it",
    )
    add.add_argument(
        "--capture-statuses",
        help="woocommerce: order statuses that capture, comma-separated (default: completed)",
    )
    add.add_argument(
        "--description-template",
        help="the capture description customers see, e.g. 'Parcel {fulfillment_name}'; plain "
        "fields only: " + ", ".join("{" + name + "}" for name in DESCRIPTION_FIELDS),
    )
    add.add_argument("--json", action="store_true", help="print one JSON object")
    add.set_defaults(run=lambda args: _run(_shop_add, args))
    listing = _command(shops, "list", "list every shop, one a line")
    _listing(listing)
    listing.set_defaults(run=lambda args: _run(_shop_list, args))
    show = _command(shops, "show", "show one shop and its platform's options, without secrets")
    show.add_argument("shop_id", help="the shop's id (shop_...)")
    show.set_defaults(run=lambda args: _run(_shop_show, args))
    rotate = _command(
        shops,
        "rotate-secret",
        "make a new webhook secret (a BigCommerce shop's hooks get its new header); the old one "
        "works 24 h",
    )
    rotate.add_argument("shop_id", help="the shop's id (shop_...)")
    rotate.set_defaults(run=lambda args: _run(_shop_rotate, args))
    remove = _command(shops, "remove", "delete a shop and everything stored for it, after asking")
    remove.add_argument("shop_id", help="the shop's id (shop_...)")
    remove.add_argument(
        "--yes",
        action="store_true",
        help="do not ask (needed when standard input is not a terminal)",
    )
    remove.set_defaults(run=lambda args: _run(_shop_remove, args))
    set_klarna = _command(
        shops,
        "set-klarna",
        "set a shop's Klarna API credentials: tested with Klarna first, saved anyway with a "
        "warning; shipments waiting on them resume",
        allow_abbrev=False,
    )
    set_klarna.add_argument("shop_id", help="the shop's id (shop_...)")
    set_klarna.add_argument("--klarna-username", help="default: the shop's current one")
    set_klarna.add_argument("--klarna-region", choices=REGIONS, help="default: the shop's")
    set_klarna.add_argument(
        "--klarna-environment", choices=ENVIRONMENTS, help="default: the shop's"
    )
    set_klarna.add_argument(
        "--klarna-password-stdin",
        action="store_true",
        help="read the Klarna API password from standard input (never from the command line); "
        "required unless run at a terminal, which asks for it",
    )
    set_klarna.set_defaults(run=lambda args: _run(_shop_set_klarna, args))

    link = _command(commands, "admin-link", "print a one-time sign-in URL for a shop")
    link.add_argument("shop_id", help="the shop's id (shop_...)")
    link.set_defaults(run=lambda args: _run(_admin_link, args))

    rotate_keys = _command(
        commands,
        "rotate-keys",
        "re-encrypt stored secrets with the first key of KLARNA_CAPTURE_SECRET_KEY",
    )
    rotate_keys.set_defaults(run=lambda args: _run(_rotate_keys))

    jobs = _command(commands, "jobs", "list jobs, retry a dead letter")
    job_commands = _commands(jobs, "jobs_command", "JOBS_COMMAND")
    job_list = _command(job_commands, "list", "list recent jobs, newest first")
    job_list.add_argument("--dead", action="store_true", help="dead letters only")
    job_list.add_argument(
        "--limit", type=_limit, default=50, help=f"at most this many, 1 to {MAX_LIMIT}"
    )
    _listing(job_list)
    job_list.set_defaults(run=lambda args: _run(_jobs_list, args))
    retry = _command(
        job_commands, "retry", "run a job that did not finish again, from its first attempt"
    )
    retry.add_argument("job_id", type=int, help="the job's id, as jobs list shows it")
    retry.set_defaults(run=lambda args: _run(_jobs_retry, args))

    deliveries = _command(commands, "deliveries", "replay a stored delivery")
    delivery_commands = _commands(deliveries, "deliveries_command", "DELIVERIES_COMMAND")
    replay = _command(delivery_commands, "replay", "process a stored delivery again")
    replay.add_argument("delivery_id", type=int, help="the delivery's id")
    replay.set_defaults(run=lambda args: _run(_deliveries_replay, args))

    compliance = _command(commands, "compliance", "list privacy requests and their reports")
    compliance_commands = _commands(compliance, "compliance_command", "COMPLIANCE_COMMAND")
    compliance_list = _command(
        compliance_commands,
        "list",
        "list recent privacy requests (data requests, redactions), oldest first",
    )
    compliance_list.add_argument(
        "--limit", type=_limit, default=100, help=f"at most this many, 1 to {MAX_LIMIT}"
    )
    _listing(compliance_list)
    compliance_list.set_defaults(run=lambda args: _run(_compliance_list, args))

    prune = _command(
        commands,
        "prune",
        "remove what the KLARNA_CAPTURE_RETAIN_* windows let go now; prints rows per table",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would go, and change nothing"
    )
    prune.set_defaults(run=lambda args: _run(_prune, args))

    sandbox = _command(commands, "sandbox", "run a simulator of a system we talk to")
    simulators = _commands(sandbox, "simulator", "SIMULATOR")
    klarna = _command(simulators, "klarna", "run Klarna's Order management API, in memory")
    klarna.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    klarna.add_argument("--port", type=_port, default=8100, help="the port to listen on")
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
        simulator = _command(simulators, name, what)
        simulator.add_argument("--host", default="127.0.0.1", help="the address to listen on")
        simulator.add_argument("--port", type=_port, default=port, help="the port to listen on")
        simulator.set_defaults(run=run)
    return parser


def _settings() -> Settings:
    for warning in unknown_variables():
        print(warning, file=sys.stderr)
    settings, created = ensure_secret_keys(load_settings())
    for line in (created, *secure_data_dir(settings)):
        if line:
            print(line, file=sys.stderr)
    return with_serve_url(settings)


def _run(command: Callable[..., Awaitable[int]], *args: Any) -> int:
    settings = _settings()
    configure_logging(settings.log_level)

    async def main() -> int:
        async with open_service(settings) as service:
            return await command(service, *args)

    return asyncio.run(main())


def _serve(args: argparse.Namespace) -> int:
    from plugin.app import create_app

    settings = _settings()
    configure_logging(settings.log_level)
    sockets = server.listen(args.host, args.port)
    try:
        # The store is reached (and migrated) before anything starts, so that a database that
        # cannot be reached is one line and an exit, like a port that is taken.
        asyncio.run(_migrate_store(settings))
        settings = record_serve_url(settings, _reachable(server.url_of(sockets[0])))
        app = create_app(
            settings, lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_ms / 1000
        )
        _freeze_startup_objects()
        _hand_off_the_gil_sooner(settings.database_url)

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
                    trusted_proxies=settings.trusted_proxies,
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
        f"{settings.public_url} ({settings.workers} workers, database "
        f"{settings.database_url.split(':', 1)[0]})",
        file=sys.stderr,
        flush=True,
    )
    if not settings.public_url_configured:
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
        settings.database_url, pool_size=2, timeout=settings.database_timeout_seconds
    )
    try:
        return await store.migrate()
    finally:
        await store.close()


def _worker(args: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_level)
    if settings.workers < 1:
        raise ConfigError("KLARNA_CAPTURE_WORKERS must be at least 1 for `klarna-capture worker`")

    async def main() -> int:
        async with open_service(
            settings, lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_ms / 1000
        ) as service:
            task = asyncio.ensure_future(service.worker.run())
            if metrics.serving():  # no listener, nobody to count jobs for
                counts = asyncio.ensure_future(metrics.refresh_job_counts(service.store))
                task.add_done_callback(lambda _: counts.cancel())
            if settings.prune_interval_seconds:
                pruning = asyncio.ensure_future(
                    retention.prune_forever(
                        service.store,
                        retention.Retention.of(settings),
                        settings.prune_interval_seconds,
                    )
                )
                task.add_done_callback(lambda _: pruning.cancel())
            loop = asyncio.get_running_loop()
            # Stopped, not cancelled: the running jobs are handed back before the exit.
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, service.worker.stop)
            print(
                f"klarna-capture worker running ({settings.workers} workers)",
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


def _secret_from(flag: bool, prompt: str, what: str, option: str) -> str | None:
    """A secret from standard input (one line) or a prompt; None, said why, when neither."""
    if flag:
        return sys.stdin.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    print(f"klarna-capture: give the {what} on standard input with {option}", file=sys.stderr)
    return None


async def _shop_add(service: Service, args: argparse.Namespace) -> int:
    woo = args.platform == woocommerce.NAME
    given = [
        name
        for name, value in (
            ("--site-url", args.site_url),
            ("--consumer-key", args.consumer_key),
            ("--consumer-secret-stdin", args.consumer_secret_stdin),
            ("--capture-statuses", args.capture_statuses),
        )
        if value
    ]
    if not woo and given:
        print(f"klarna-capture: {given[0]} is for --platform woocommerce", file=sys.stderr)
        return 2
    site_url = api_key = None
    options = None
    if woo:
        if not args.site_url or not args.consumer_key:
            print(
                "klarna-capture: --platform woocommerce needs --site-url and --consumer-key",
                file=sys.stderr,
            )
            return 2
        try:
            site_url = woocommerce.normalize_site_url(args.site_url)
            if args.capture_statuses:
                options = ShopOptions(
                    capture_statuses=woocommerce.parse_statuses(args.capture_statuses)
                )
        except ValueError as error:
            print(f"klarna-capture: {error}", file=sys.stderr)
            return 2
        if await service.store.shop_by_domain(woocommerce.NAME, site_url) is not None:
            print(f"klarna-capture: a shop is already connected to {site_url}", file=sys.stderr)
            return 1
    if args.description_template:
        refused = description_problem(args.description_template)
        if refused:
            print(f"klarna-capture: --description-template: {refused}", file=sys.stderr)
            return 2
        options = msgspec.structs.replace(
            options or ShopOptions(), description_template=args.description_template
        )
    password = _secret_from(
        args.klarna_password_stdin,
        "Klarna API password: ",
        "password",
        "--klarna-password-stdin",
    )
    if password is None:
        return 2
    if not password:
        print("klarna-capture: the Klarna API password is empty", file=sys.stderr)
        return 2
    if woo:
        secret = _secret_from(
            args.consumer_secret_stdin,
            "WooCommerce consumer secret: ",
            "consumer secret",
            "--consumer-secret-stdin",
        )
        if secret is None:
            return 2
        problem = woocommerce.api_key_problem(args.consumer_key.strip(), secret.strip())
        if problem:
            print(f"klarna-capture: {problem[1]}", file=sys.stderr)
            return 2
        api_key = woocommerce.encode_api_key(
            woocommerce.ApiKey(
                consumer_key=args.consumer_key.strip(), consumer_secret=secret.strip()
            )
        )
    if args.status_url and not args.status_url.startswith(("https://", "http://")):
        print("klarna-capture: --status-url must be an http(s) URL", file=sys.stderr)
        return 2
    refused = await _address_problem(
        service, ("--status-url", args.status_url), ("--site-url", site_url)
    )
    if refused is not None:
        print(f"klarna-capture: {refused}", file=sys.stderr)
        return 2
    shop, secret = await service.shops.create(
        platform=args.platform,
        name=args.name,
        klarna_region=args.klarna_region,
        klarna_environment=args.klarna_environment,
        klarna_username=args.klarna_username,
        klarna_password=password,
        status_url=args.status_url,
        options=options,
        shop_domain=site_url,
        platform_token=api_key,
    )
    path = f"/webhooks/{shop.platform}/{shop.id}"
    if args.json:
        print(
            msgspec.json.encode(
                {"shop_id": shop.id, "webhook_path": path, "webhook_secret": secret}
            ).decode()
        )
    else:
        print(f"shop {shop.id} created")
        print(f"webhook URL:    {service.settings.public_url}{path}")
        print(f"webhook secret: {secret}  (shown this once)")
        if woo:
            print(
                "In WooCommerce → Settings → Advanced → Webhooks, add the topics Order updated "
                "and Order created with that delivery URL, that secret as their Secret, and API "
                "version WP REST API Integration v3."
            )
    return 0


async def _address_problem(service: Service, *urls: tuple[str, str | None]) -> str | None:
    """The first given URL that leads outside the public internet (and the networks the
    operator allows), named by its option."""
    guard = AddressGuard(service.settings.allowed_private_networks)
    for option, url in urls:
        problem = await url_problem(url, guard) if url else None
        if problem is not None:
            return f"{option}: {problem}"
    return None


def _print_list(
    args: argparse.Namespace, what: str, header: Sequence[str], rows: Sequence[dict[str, Any]]
) -> int:
    """A list command's output: a JSON array with --json; else a header row and one line a
    row, columns aligned (the last one left as it is); nothing on stdout when empty."""
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    if not rows:
        print(f"no {what}", file=sys.stderr)
        return 0
    cells = [[name.upper() for name in header]] + [
        ["" if row[name] is None else str(row[name]) for name in header] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    for line in cells:
        print("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]))
    return 0


async def _shop_list(service: Service, args: argparse.Namespace) -> int:
    rows = [
        {
            "shop_id": shop.id,
            "platform": shop.platform,
            "klarna": f"{shop.klarna_region}/{shop.klarna_environment}",
            "state": "enabled" if shop.enabled else "disabled",
            "created": _iso(shop.created_at),
            "name": shop.name,
        }
        for shop in await service.store.list_shops()
    ]
    return _print_list(
        args, "shops", ("shop_id", "platform", "klarna", "state", "created", "name"), rows
    )


async def _find_shop(service: Service, shop_id: str) -> Shop | None:
    shop = await service.store.get_shop(shop_id)
    if shop is None:
        print(f"klarna-capture: no shop {shop_id}", file=sys.stderr)
    return shop


async def _shop_show(service: Service, args: argparse.Namespace) -> int:
    shop = await _find_shop(service, args.shop_id)
    if shop is None:
        return 1
    secrets = await service.store.webhook_secrets(shop.id, time.time())
    shown = {
        "shop_id": shop.id,
        "platform": shop.platform,
        "name": shop.name,
        "enabled": shop.enabled,
        "klarna_region": shop.klarna_region,
        "klarna_environment": shop.klarna_environment,
        "klarna_username": shop.klarna_username,
        "klarna_password": "set" if shop.klarna_configured else "not set",
        "status_url": shop.status_url,
        "options": {
            name: msgspec.to_builtins(getattr(shop.options, name))
            for name in registry.options_of(shop.platform)
        },
        "webhook_url": _webhook_url(service, shop),
        "webhook_secrets": [
            {
                "created_at": _iso(s.created_at),
                "expires_at": _iso(s.expires_at) if s.expires_at else None,
            }
            for s in secrets
        ],
        "created_at": _iso(shop.created_at),
    }
    if shop.platform == woocommerce.NAME:
        shown["site_url"] = shop.shop_domain
        shown["rest_api_key"] = "set" if shop.platform_token is not None else "not set"
    elif shop.shop_domain is not None:
        shown["shop_domain"] = shop.shop_domain
        shown["app_installed"] = shop.platform_token is not None
    print(msgspec.json.format(msgspec.json.encode(shown)).decode())
    return 0


def _webhook_url(service: Service, shop: Shop) -> str:
    if shop.shop_domain is not None and shop.platform != woocommerce.NAME:
        # a storefront app: one endpoint for every shop
        return f"{service.settings.public_url}/webhooks/{shop.platform}"
    return f"{service.settings.public_url}/webhooks/{shop.platform}/{shop.id}"


async def _compliance_list(service: Service, args: argparse.Namespace) -> int:
    rows = [
        {
            "received": _iso(request.received_at),
            "platform": request.platform,
            "shop_domain": request.shop_domain,
            "topic": request.topic,
            "report": request.report,
        }
        for request in reversed(await service.store.compliance_requests(limit=args.limit))
    ]
    return _print_list(
        args,
        "privacy requests",
        ("received", "platform", "shop_domain", "topic", "report"),
        rows,
    )


async def _shop_rotate(service: Service, args: argparse.Namespace) -> int:
    shop = await _find_shop(service, args.shop_id)
    if shop is None:
        return 1
    secret = await service.shops.rotate_secret(args.shop_id)
    if shop.platform == bigcommerce.NAME:
        return await _bigcommerce_rehook(service, shop)
    print(f"new webhook secret: {secret}  (shown this once; the previous one works for 24 hours)")
    return 0


async def _bigcommerce_rehook(service: Service, shop: Shop) -> int:
    """A BigCommerce shop's secret is its hooks' header: the hooks get the new one now (the
    previous one is taken for 24 hours, so deliveries on their way still pass)."""
    token = service.shops.platform_token(shop)
    if token is None:
        print("new hook secret made; the app is not installed, so no hook to update")
        return 0
    try:
        await bigcommerce_web.subscribe(service, shop, token)
    except (BigCommerceError, httpx2.HTTPError) as error:
        print(
            f"klarna-capture: new hook secret made, but the hooks were not updated ({error}); "
            "the next /load updates them, and the previous secret works for 24 hours",
            file=sys.stderr,
        )
        return 1
    print("new hook secret made and set on the store's BigCommerce hooks")
    return 0


async def _shop_remove(service: Service, args: argparse.Namespace) -> int:
    shop = await _find_shop(service, args.shop_id)
    if shop is None:
        return 1
    print(
        f"Removing shop {shop.id} ({shop.name}, {shop.platform}) deletes it with its Klarna "
        "credentials, webhook secrets, deliveries, jobs, capture records, audit trail, status "
        "callbacks, sign-in links and sessions. Klarna keeps the captures made.",
        file=sys.stderr,
    )
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "klarna-capture: nothing removed: give --yes to remove without asking",
                file=sys.stderr,
            )
            return 2
        print(f"Remove shop {shop.id}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline(16).strip().lower() not in ("y", "yes"):
            print("nothing removed", file=sys.stderr)
            return 1
    if not await service.store.remove_shop(shop.id):
        print(f"klarna-capture: no shop {shop.id}", file=sys.stderr)
        return 1
    print(f"shop {shop.id} removed, with everything stored for it")
    return 0


async def _shop_set_klarna(service: Service, args: argparse.Namespace) -> int:
    shop = await _find_shop(service, args.shop_id)
    if shop is None:
        return 1
    username = args.klarna_username or shop.klarna_username
    if not username:
        print(
            "klarna-capture: the shop has no Klarna username yet: give --klarna-username",
            file=sys.stderr,
        )
        return 2
    password = _secret_from(
        args.klarna_password_stdin, "Klarna API password: ", "password", "--klarna-password-stdin"
    )
    if password is None:
        return 2
    if not password:
        print("klarna-capture: the Klarna API password is empty", file=sys.stderr)
        return 2
    region = args.klarna_region or shop.klarna_region
    environment = args.klarna_environment or shop.klarna_environment
    tested = await check_credentials(
        service.pipeline.klarna_http[0],
        username=username,
        password=password,
        region=region,
        environment=environment,
        url=service.settings.klarna_url,
    )
    waiting = await service.store.waiting(shop.id, KLARNA_CREDENTIALS)
    await service.shops.update(
        shop.id,
        ShopChanges(klarna_username=username, klarna_region=region, klarna_environment=environment),
        klarna_password=password,
    )
    if tested.outcome == "accepted":
        print(f"Klarna credentials of {shop.id} saved. {tested.text}")
    else:
        detail = f" ({tested.detail})" if tested.detail else ""
        print(
            f"klarna-capture: warning: {tested.text}{detail} The credentials are saved anyway; "
            "shipments wait on them until Klarna accepts the ones saved.",
            file=sys.stderr,
        )
    if waiting.count:
        print(f"{waiting.count} shipment(s) waiting on the credentials resumed")
    return 0


async def _admin_link(service: Service, args: argparse.Namespace) -> int:
    if await _find_shop(service, args.shop_id) is None:
        return 1
    token = Auth(service.settings.secret_keys).link_token(args.shop_id)
    print(f"{service.settings.public_url}/admin/login?token={token}")
    print("Works once, for 15 minutes.", file=sys.stderr)
    return 0


async def _rotate_keys(service: Service) -> int:
    resealed, stored = await service.shops.rotate_keys()
    print(f"re-encrypted {resealed} of {stored} stored secrets with the first key")
    return 0


def _job_row(job: Job) -> dict[str, Any]:
    error = None
    if job.last_error:
        last = msgspec.json.decode(job.last_error)
        error = f"{last.get('step')}: {last.get('error_code')}"
        if last.get("correlation_id"):
            error += f" (correlation_id {last['correlation_id']})"
    return {
        "job_id": job.id,
        "state": job.state,
        "kind": job.kind,
        "shop_id": job.shop_id,
        "key": job.key,
        "attempts": job.attempts,
        "updated": _iso(job.updated_at),
        "error": error,
    }


async def _jobs_list(service: Service, args: argparse.Namespace) -> int:
    jobs = await service.store.list_jobs(dead_only=args.dead, limit=args.limit)
    return _print_list(
        args,
        "dead letters" if args.dead else "jobs",
        ("job_id", "state", "kind", "shop_id", "key", "attempts", "updated", "error"),
        [_job_row(job) for job in jobs],
    )


async def _jobs_retry(service: Service, args: argparse.Namespace) -> int:
    job = await service.store.get_job(args.job_id)
    if job is None:
        print(f"klarna-capture: no job {args.job_id}", file=sys.stderr)
        return 1
    if job.state == "done":
        print(
            f"klarna-capture: job {job.id} is done: there is nothing to retry "
            "(deliveries replay processes a delivery again)",
            file=sys.stderr,
        )
        return 1
    if not await service.store.requeue_job(job.id, time.time()):
        print(f"klarna-capture: job {job.id} is running; it cannot be retried now", file=sys.stderr)
        return 1
    print(f"job {job.id} queued again")
    return 0


async def _deliveries_replay(service: Service, args: argparse.Namespace) -> int:
    delivery = await service.store.get_delivery(args.delivery_id)
    if delivery is None:
        print(f"klarna-capture: no delivery {args.delivery_id}", file=sys.stderr)
        return 1
    if delivery.status != "accepted" or delivery.fulfillment_id is None:
        print(
            f"klarna-capture: delivery {delivery.id} was rejected ({delivery.reason}); "
            "there is nothing to replay",
            file=sys.stderr,
        )
        return 1
    if delivery.pruned_at is not None:
        print(
            f"klarna-capture: delivery {delivery.id}'s body was removed on "
            f"{_iso(delivery.pruned_at)} (retention: its shipment was settled); "
            "there is nothing to replay",
            file=sys.stderr,
        )
        return 1
    job_id = await service.store.queue_fulfillment(
        delivery.shop_id, delivery.fulfillment_id, time.time()
    )
    print(f"delivery {delivery.id} replayed: job {job_id} queued")
    return 0


async def _prune(service: Service, args: argparse.Namespace) -> int:
    report = await retention.prune(
        service.store, retention.Retention.of(service.settings), dry_run=args.dry_run
    )
    if report is None:
        print("klarna-capture: another process is pruning now; try again later", file=sys.stderr)
        return 1
    for table, count in report.rows.items():
        what = "bodies" if table == "deliveries.body" else "rows"
        done = "would be emptied" if args.dry_run else "emptied"
        if table != "deliveries.body":
            done = "would be deleted" if args.dry_run else "deleted"
        print(f"{table:<20} {count:>9} {what} {done}")
    if service.settings.retain_ledger_days is None:
        print("captures, operations, audit, compliance_requests: kept (RETAIN_LEDGER_DAYS=never)")
    return 0


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


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


if __name__ == "__main__":
    sys.exit(main())
