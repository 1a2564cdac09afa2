"""shop (add, list, show, rotate-secret, remove, set-klarna, set), admin-link and rotate-keys: the
shops, their credentials and secrets. Each platform's own options and steps come from the
registry (its `shop_add`, `shop_details` and `rehook`)."""

import argparse
import sys
import time
from typing import Any, get_args

import msgspec

from plugin import emails
from plugin.capture import DESCRIPTION_FIELDS, description_problem
from plugin.cli import arguments, running
from plugin.credentials import check_credentials
from plugin.klarna.models import Environment, Region
from plugin.outbound import AddressGuard, url_problem
from plugin.platforms import registry
from plugin.platforms.base import ShopAdd, ShopAddRefused
from plugin.service import Service
from plugin.store import ShopChanges
from plugin.store.records import DEFAULT_PAYMENT_GATEWAYS, KLARNA_CREDENTIALS, Shop, ShopOptions
from plugin.web.auth import Auth
from plugin.web.forms import KEEP_ALIVE_DAYS, gateways, gateways_problem, parse_keep_alive_days

# The choices are the Klarna client's own types' values, so that a shop added here is one the
# client can call.
REGIONS: tuple[Region, ...] = get_args(Region)
ENVIRONMENTS: tuple[Environment, ...] = get_args(Environment)
# A Shopify shop's payment choices, as its options spell them.
PAYMENT_FLOWS: tuple[str, ...] = get_args(ShopOptions.__annotations__["payment_flow"])
SINGLE_CAPTURES: tuple[str, ...] = get_args(ShopOptions.__annotations__["single_capture"])


def _addable() -> dict[str, ShopAdd]:
    """The platforms whose shops `shop add` makes (the others' come from installing their
    app), in the registry's order: the first is the default."""
    return {
        name: platform.shop_add
        for name, platform in registry.PLATFORMS.items()
        if platform.shop_add is not None
    }


def add_commands(commands: Any) -> None:
    shop = arguments.command(
        commands,
        "shop",
        "add, list, show, rotate the secret of, remove shops, set their Klarna keys",
    )
    shops = arguments.commands(shop, "shop_command", "SHOP_COMMAND")
    add = arguments.command(
        shops, "add", "create a shop; prints its id, webhook URL and secret", allow_abbrev=False
    )
    addable = _addable()
    add.add_argument(
        "--platform",
        choices=list(addable),
        default=next(iter(addable)),
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
    for part in addable.values():
        part.add_options(add)
    add.add_argument(
        "--description-template",
        help="the capture description customers see, e.g. 'Parcel {fulfillment_name}'; plain "
        "fields only: " + ", ".join("{" + name + "}" for name in DESCRIPTION_FIELDS),
    )
    add.add_argument(
        "--release-remaining",
        action=argparse.BooleanOptionalAction,
        help="release what is left of an order's authorization when it is cancelled or "
        "completed with goods never shipped (default: on)",
    )
    add.add_argument(
        "--keep-alive",
        action=argparse.BooleanOptionalAction,
        help="extend the authorization of an order with goods unshipped before it expires "
        "(default: on)",
    )
    low, high = KEEP_ALIVE_DAYS
    add.add_argument(
        "--keep-alive-days",
        metavar="DAYS",
        help=f"extend an authorization when it expires within DAYS days, {low} to {high} "
        f"(default: {ShopOptions().keep_alive_days})",
    )
    _mail_options(add)
    add.add_argument("--json", action="store_true", help="print one JSON object")
    add.set_defaults(run=lambda args: running.run(_shop_add, args))
    listing = arguments.command(shops, "list", "list every shop, one a line")
    arguments.listing(listing)
    listing.set_defaults(run=lambda args: running.run(_shop_list, args))
    show = arguments.command(
        shops, "show", "show one shop and its platform's options, without secrets"
    )
    show.add_argument("shop_id", help="the shop's id (shop_...)")
    show.set_defaults(run=lambda args: running.run(_shop_show, args))
    rotate = arguments.command(
        shops,
        "rotate-secret",
        "make a new webhook secret (a BigCommerce shop's hooks get its new header); the old one "
        "works 24 h",
    )
    rotate.add_argument("shop_id", help="the shop's id (shop_...)")
    rotate.set_defaults(run=lambda args: running.run(_shop_rotate, args))
    remove = arguments.command(
        shops, "remove", "delete a shop and everything stored for it, after asking"
    )
    remove.add_argument("shop_id", help="the shop's id (shop_...)")
    remove.add_argument(
        "--yes",
        action="store_true",
        help="do not ask (needed when standard input is not a terminal)",
    )
    remove.set_defaults(run=lambda args: running.run(_shop_remove, args))
    set_klarna = arguments.command(
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
    set_klarna.set_defaults(run=lambda args: running.run(_shop_set_klarna, args))

    changes = arguments.command(
        shops,
        "set",
        "change a shop's email address, whether it gets failure alerts and, for a Shopify "
        "shop, who captures its orders",
        allow_abbrev=False,
    )
    changes.add_argument("shop_id", help="the shop's id (shop_...)")
    _mail_options(changes, changing=True)
    _payment_options(changes)
    changes.set_defaults(run=lambda args: running.run(_shop_set, args))

    link = arguments.command(commands, "admin-link", "print a one-time sign-in URL for a shop")
    link.add_argument("shop_id", help="the shop's id (shop_...)")
    link.set_defaults(run=lambda args: running.run(_admin_link, args))

    rotate_keys = arguments.command(
        commands,
        "rotate-keys",
        "re-encrypt stored secrets with the first key of KLARNA_CAPTURE_SECRET_KEY",
    )
    rotate_keys.set_defaults(run=lambda args: running.run(_rotate_keys))


def _mail_options(parser: argparse.ArgumentParser, *, changing: bool = False) -> None:
    parser.add_argument(
        "--email",
        metavar="ADDRESS",
        help="where the merchant receives sign-in links (/admin/login) and failure alerts"
        + ("; an empty ADDRESS removes it" if changing else ""),
    )
    parser.add_argument(
        "--failure-alerts",
        action=argparse.BooleanOptionalAction,
        help="mail the shop's address when shipments or orders need attention, at most once an "
        "hour" + ("" if changing else " (default: off)"),
    )


def _payment_options(parser: argparse.ArgumentParser) -> None:
    """A Shopify shop's payment flow (its shops come from installing the app, not `shop add`:
    `shop set` is where the command line chooses it)."""
    parser.add_argument(
        "--payment-flow",
        choices=PAYMENT_FLOWS,
        help="Shopify: who captures the orders: klarna (this service at Klarna, for Klarna "
        "orders made outside Shopify's checkout) or shopify (Shopify's orderCapture, for "
        "Klarna taken in Shopify's checkout)",
    )
    parser.add_argument(
        "--payment-gateways",
        metavar="NAMES",
        help="Shopify: the gateway names of the authorizations Shopify captures, "
        "comma-separated; an empty NAMES restores " + ", ".join(DEFAULT_PAYMENT_GATEWAYS),
    )
    parser.add_argument(
        "--single-capture",
        choices=SINGLE_CAPTURES,
        help="Shopify: an order Shopify captures only once (no Shopify Plus) is captured whole "
        "at its first shipment (money taken for goods not shipped yet) or its last (the "
        "authorization may expire first)",
    )


def _payment_changes(shop: Shop, args: argparse.Namespace) -> dict[str, Any]:
    """The payment options `shop set` was given, checked as the settings page checks them;
    ShopAddRefused naming the first given wrong."""
    given: dict[str, Any] = {}
    if args.payment_flow is not None:
        given["payment_flow"] = args.payment_flow
    if args.payment_gateways is not None:
        problem = gateways_problem(args.payment_gateways[:300])
        if len(args.payment_gateways) > 300 or problem is not None:
            raise ShopAddRefused(f"--payment-gateways: {problem or 'at most 300 characters'}")
        given["payment_gateways"] = gateways(args.payment_gateways)
    if args.single_capture is not None:
        given["single_capture"] = args.single_capture
    if given and "payment_flow" not in registry.options_of(shop.platform):
        option = "--" + next(iter(given)).replace("_", "-")
        raise ShopAddRefused(f"{option} is for Shopify shops")
    return given


def _email(value: str | None) -> str | None:
    """--email as stored (plugin.emails' normal form); ShopAddRefused when it is no address."""
    if not value:
        return None
    address = emails.normalise(value)
    if address is None:
        raise ShopAddRefused(f"--email: {emails.PROBLEM}")
    return address


def _read_secret(flag: bool, prompt: str, what: str, option: str) -> str:
    """running.secret_from for a platform's `shop add`: refused, not None, when unread."""
    secret = running.secret_from(flag, prompt, what, option)
    if secret is None:
        # running.secret_from said why; the refusal only carries the exit status.
        raise ShopAddRefused("", status=2)
    return secret


async def _shop_add(service: Service, args: argparse.Namespace) -> int:
    try:
        return await _add(service, args)
    except ShopAddRefused as refused:
        if str(refused):
            print(f"klarna-capture: {refused}", file=sys.stderr)
        return refused.status


async def _add(service: Service, args: argparse.Namespace) -> int:
    addable = _addable()
    part = addable[args.platform]
    for name, other in addable.items():
        given = [
            option
            for option in other.options
            if name != args.platform and getattr(args, option.lstrip("-").replace("-", "_"))
        ]
        if given:
            raise ShopAddRefused(f"{given[0]} is for --platform {name}")
    new = part.new_shop(args)
    if new.domain is not None and await service.store.shop_by_domain(args.platform, new.domain):
        raise ShopAddRefused(f"a shop is already connected to {new.domain}", status=1)
    options = _common_options(new.options, args)
    email = _email(args.email)
    password = _read_secret(
        args.klarna_password_stdin,
        "Klarna API password: ",
        "password",
        "--klarna-password-stdin",
    )
    if not password:
        raise ShopAddRefused("the Klarna API password is empty")
    api_token = part.api_token(args, _read_secret) if part.api_token is not None else None
    if args.status_url and not args.status_url.startswith(("https://", "http://")):
        raise ShopAddRefused("--status-url must be an http(s) URL")
    refused = await _address_problem(service, ("--status-url", args.status_url), *new.addresses)
    if refused is not None:
        raise ShopAddRefused(refused)
    # Asked only of an address found public above (or on a network the operator allows).
    zone = await part.time_zone(service.site_http, new) if part.time_zone is not None else None
    if zone is not None:
        options = msgspec.structs.replace(options or ShopOptions(), time_zone=zone)
    shop, secret = await service.shops.create(
        platform=args.platform,
        name=args.name,
        klarna_region=args.klarna_region,
        klarna_environment=args.klarna_environment,
        klarna_username=args.klarna_username,
        klarna_password=password,
        status_url=args.status_url,
        options=options,
        shop_domain=new.domain,
        platform_token=api_token,
        email=email,
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
        print(f"webhook URL:    {service.settings.web.public_url}{path}")
        print(f"webhook secret: {secret}  (shown this once)")
        if part.time_zone is not None:
            said = "as the storefront names it" if zone else "the storefront names none"
            print(f"time zone:      {zone or 'UTC'}  ({said}; the settings page changes it)")
        if part.created:
            print(part.created)
    return 0


def _common_options(options: ShopOptions | None, args: argparse.Namespace) -> ShopOptions | None:
    """The platform's options with the common ones given on the command line; ShopAddRefused
    naming the first option given wrong."""
    given: dict[str, Any] = {}
    if args.description_template:
        refused = description_problem(args.description_template)
        if refused:
            raise ShopAddRefused(f"--description-template: {refused}")
        given["description_template"] = args.description_template
    if args.release_remaining is not None:
        given["release_remaining"] = args.release_remaining
    if args.keep_alive is not None:
        given["keep_alive"] = args.keep_alive
    if args.failure_alerts is not None:
        if args.failure_alerts and not args.email:
            raise ShopAddRefused("--failure-alerts: give the --email they go to")
        given["failure_alerts"] = args.failure_alerts
    if args.keep_alive_days is not None:
        days = parse_keep_alive_days(args.keep_alive_days)
        if days is None:
            low, high = KEEP_ALIVE_DAYS
            raise ShopAddRefused(
                f"--keep-alive-days: give a whole number of days from {low} to {high}"
            )
        given["keep_alive_days"] = days
    if not given:
        return options
    return msgspec.structs.replace(options or ShopOptions(), **given)


async def _address_problem(service: Service, *urls: tuple[str, str | None]) -> str | None:
    """The first given URL that leads outside the public internet (and the networks the
    operator allows), named by its option."""
    guard = AddressGuard(service.settings.web.allowed_private_networks)
    for option, url in urls:
        problem = await url_problem(url, guard) if url else None
        if problem is not None:
            return f"{option}: {problem}"
    return None


async def _shop_list(service: Service, args: argparse.Namespace) -> int:
    rows = [
        {
            "shop_id": shop.id,
            "platform": shop.platform,
            "klarna": f"{shop.klarna_region}/{shop.klarna_environment}",
            "state": "enabled" if shop.enabled else "disabled",
            "created": running.iso(shop.created_at),
            "name": shop.name,
        }
        for shop in await service.store.list_shops()
    ]
    return running.print_list(
        args, "shops", ("shop_id", "platform", "klarna", "state", "created", "name"), rows
    )


async def _shop_show(service: Service, args: argparse.Namespace) -> int:
    shop = await running.find_shop(service, args.shop_id)
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
        "email": shop.email,
        "options": {
            name: msgspec.to_builtins(getattr(shop.options, name))
            for name in registry.options_of(shop.platform)
        },
        "webhook_url": _webhook_url(service, shop),
        "webhook_secrets": [
            {
                "created_at": running.iso(s.created_at),
                "expires_at": running.iso(s.expires_at) if s.expires_at else None,
            }
            for s in secrets
        ],
        "created_at": running.iso(shop.created_at),
    }
    platform = registry.get(shop.platform)
    if platform is not None and platform.shop_details is not None:
        shown.update(platform.shop_details(shop))
    elif shop.shop_domain is not None:
        shown["shop_domain"] = shop.shop_domain
        shown["app_installed"] = shop.platform_token is not None
    print(msgspec.json.format(msgspec.json.encode(shown)).decode())
    return 0


def _webhook_url(service: Service, shop: Shop) -> str:
    if shop.shop_domain is not None and shop.platform not in _addable():
        # a storefront app's installed shop: one endpoint for every shop
        return f"{service.settings.web.public_url}/webhooks/{shop.platform}"
    return f"{service.settings.web.public_url}/webhooks/{shop.platform}/{shop.id}"


async def _shop_rotate(service: Service, args: argparse.Namespace) -> int:
    shop = await running.find_shop(service, args.shop_id)
    if shop is None:
        return 1
    secret = await service.shops.rotate_secret(args.shop_id)
    platform = registry.get(shop.platform)
    if platform is not None and platform.rehook is not None:
        return await platform.rehook(service, shop)
    print(f"new webhook secret: {secret}  (shown this once; the previous one works for 24 hours)")
    return 0


async def _shop_remove(service: Service, args: argparse.Namespace) -> int:
    shop = await running.find_shop(service, args.shop_id)
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
    shop = await running.find_shop(service, args.shop_id)
    if shop is None:
        return 1
    username = args.klarna_username or shop.klarna_username
    if not username:
        print(
            "klarna-capture: the shop has no Klarna username yet: give --klarna-username",
            file=sys.stderr,
        )
        return 2
    password = running.secret_from(
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
        url=service.settings.klarna.url,
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


async def _shop_set(service: Service, args: argparse.Namespace) -> int:
    shop = await running.find_shop(service, args.shop_id)
    if shop is None:
        return 1
    payment = (args.payment_flow, args.payment_gateways, args.single_capture)
    if args.email is None and args.failure_alerts is None and payment == (None, None, None):
        print("klarna-capture: give --email, --failure-alerts or a payment option", file=sys.stderr)
        return 2
    try:
        email = shop.email if args.email is None else _email(args.email)
        if args.failure_alerts and email is None:
            raise ShopAddRefused("--failure-alerts: the shop has no address; give --email")
        paying = _payment_changes(shop, args)
    except ShopAddRefused as refused:
        print(f"klarna-capture: {refused}", file=sys.stderr)
        return 2
    alerts = shop.options.failure_alerts if args.failure_alerts is None else args.failure_alerts
    # Alerts without an address would go nowhere: removing the address stops them.
    alerts = alerts and email is not None
    options = msgspec.structs.replace(shop.options, failure_alerts=alerts, **paying)
    await service.shops.update(shop.id, ShopChanges(email=email, options=options))
    print(f"shop {shop.id}: email {email or 'none'}, failure alerts {'on' if alerts else 'off'}")
    if "payment_flow" in registry.options_of(shop.platform):
        print(
            f"payments captured by {options.payment_flow}; gateways "
            f"{', '.join(options.payment_gateways)}; an order captured once is captured at its "
            f"{options.single_capture} shipment"
        )
    return 0


async def _admin_link(service: Service, args: argparse.Namespace) -> int:
    if await running.find_shop(service, args.shop_id) is None:
        return 1
    token = Auth(service.settings.secret_keys).link_token(args.shop_id)
    print(f"{service.settings.web.public_url}/admin/login?token={token}")
    print("Works once, for 15 minutes.", file=sys.stderr)
    return 0


async def _rotate_keys(service: Service) -> int:
    resealed, stored = await service.shops.rotate_keys()
    print(f"re-encrypted {resealed} of {stored} stored secrets with the first key")
    return 0
