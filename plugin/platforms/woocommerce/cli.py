"""WooCommerce's part of `klarna-capture shop`: a shop is added with its site's address and a
REST API key (the consumer secret read like a password), in the time zone its WordPress names,
and shown with them (the key only as set or not)."""

import argparse
from typing import Any

import httpx2

from plugin.platforms.base import NewShop, ReadSecret, ShopAdd, ShopAddRefused
from plugin.platforms.woocommerce.api_key import ApiKey, api_key_problem, encode_api_key
from plugin.platforms.woocommerce.site import normalize_site_url, site_time_zone
from plugin.platforms.woocommerce.statuses import parse_statuses
from plugin.store.records import Shop, ShopOptions


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site-url", help="woocommerce: the site's address, https://...")
    parser.add_argument(
        "--consumer-key", help="woocommerce: the REST API key's consumer key (ck_...)"
    )
    parser.add_argument(
        "--consumer-secret-stdin",
        action="store_true",
        help="woocommerce: read the consumer secret from standard input (after the Klarna "
        "password, when both are read from it); required with --platform woocommerce unless "
        "run at a terminal, which asks for it",
    )
    parser.add_argument(
        "--capture-statuses",
        help="woocommerce: order statuses that capture, comma-separated (default: completed)",
    )


def new_shop(args: argparse.Namespace) -> NewShop:
    if not args.site_url or not args.consumer_key:
        raise ShopAddRefused("--platform woocommerce needs --site-url and --consumer-key")
    options = None
    try:
        site_url = normalize_site_url(args.site_url)
        if args.capture_statuses:
            options = ShopOptions(capture_statuses=parse_statuses(args.capture_statuses))
    except ValueError as error:
        raise ShopAddRefused(str(error)) from None
    return NewShop(domain=site_url, options=options, addresses=(("--site-url", site_url),))


def api_token(args: argparse.Namespace, read_secret: ReadSecret) -> str:
    secret = read_secret(
        args.consumer_secret_stdin,
        "WooCommerce consumer secret: ",
        "consumer secret",
        "--consumer-secret-stdin",
    )
    problem = api_key_problem(args.consumer_key.strip(), secret.strip())
    if problem:
        raise ShopAddRefused(problem[1])
    return encode_api_key(
        ApiKey(consumer_key=args.consumer_key.strip(), consumer_secret=secret.strip())
    )


async def time_zone(http: httpx2.AsyncClient, new: NewShop) -> str | None:
    """The time zone the site's WordPress is set to, when it names one (site.site_time_zone)."""
    return await site_time_zone(http, new.domain) if new.domain else None


SHOP_ADD = ShopAdd(
    add_options=add_options,
    options=("--site-url", "--consumer-key", "--consumer-secret-stdin", "--capture-statuses"),
    new_shop=new_shop,
    api_token=api_token,
    created="In WooCommerce → Settings → Advanced → Webhooks, add the topics Order updated "
    "and Order created with that delivery URL, that secret as their Secret, and API "
    "version WP REST API Integration v3.",
    time_zone=time_zone,
)


def shop_details(shop: Shop) -> dict[str, Any]:
    return {
        "site_url": shop.shop_domain,
        "rest_api_key": "set" if shop.platform_token is not None else "not set",
    }
