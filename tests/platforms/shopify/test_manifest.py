"""manifests/shopify.app.toml against the service it describes: every URL it names is one of the
app's routes (for the method Shopify uses), and its scopes and API version are the service's."""

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.routing import Match

from plugin.app import create_app
from plugin.config import SHOPIFY_API_VERSION
from plugin.platforms.shopify.payloads import ORDER_TOPICS
from tests.web.support import running, shopify_query, shopify_settings

MANIFEST = Path(__file__).resolve().parents[3] / "manifests" / "shopify.app.toml"
COMPLIANCE_TOPICS = {"customers/data_request", "customers/redact", "shop/redact"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return tomllib.loads(MANIFEST.read_text())


def urls(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, URL) of everything Shopify calls: the app URL, OAuth redirects, webhooks."""
    named = [("GET", manifest["application_url"])]
    named += [("GET", url) for url in manifest["auth"]["redirect_urls"]]
    named += [("POST", sub["uri"]) for sub in manifest["webhooks"]["subscriptions"]]
    return named


def served(app: Any, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


def test_every_url_of_the_manifest_is_served_for_the_method_shopify_uses(
    manifest: dict[str, Any], tmp_path: Path
) -> None:
    app = create_app(
        shopify_settings(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9/shops/{shop}")
    )
    named = urls(manifest)
    assert len(named) >= 5
    hosts = {urlsplit(url).netloc for _, url in named}
    assert len(hosts) == 1  # one service
    for method, url in named:
        parts = urlsplit(url)
        assert parts.scheme == "https", url
        assert not parts.query, url
        assert served(app, method, parts.path), f"{method} {parts.path} is not a route"
    # the check can tell: a path or a method the app does not serve is caught
    assert not served(app, "DELETE", "/shopify")
    assert not served(app, "GET", "/no-such-page")


def test_the_manifest_asks_for_the_scopes_the_install_asks_for(
    manifest: dict[str, Any], tmp_path: Path, klarna_url: str, shopify_admin_url: str
) -> None:
    with running(shopify_settings(tmp_path, klarna_url, shopify_admin_url)) as site:
        started = site.client.get(
            "/auth/shopify/install", params=shopify_query(shop="corner-shop.myshopify.com")
        )
    assert started.status_code == 302
    requested = parse_qs(urlsplit(started.headers["location"]).query)["scope"][0]
    declared = manifest["access_scopes"]["scopes"]
    assert sorted(declared.split(",")) == sorted(requested.split(","))


def test_the_manifest_declares_an_embedded_app_on_the_services_api_version(
    manifest: dict[str, Any],
) -> None:
    assert manifest["embedded"] is True
    assert manifest["webhooks"]["api_version"] == SHOPIFY_API_VERSION
    assert manifest["client_id"]
    assert manifest["name"]
    subscriptions = manifest["webhooks"]["subscriptions"]
    compliance = {t for sub in subscriptions for t in sub.get("compliance_topics", [])}
    assert compliance >= COMPLIANCE_TOPICS
    topics = {t for sub in subscriptions for t in sub.get("topics", [])}
    assert {"fulfillments/create", "fulfillments/update", "app/uninstalled"} <= topics
    # the order events the receiver stores: refunds and cancellations reach Klarna
    assert set(ORDER_TOPICS) <= topics
