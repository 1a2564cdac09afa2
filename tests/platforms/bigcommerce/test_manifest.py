"""manifests/bigcommerce.md against the service it describes: every URL it tells a developer to
enter is one of the app's routes (for the method BigCommerce uses), and the scopes and webhook
scopes it names are the ones the code asks for."""

import re
from pathlib import Path
from typing import Any

from starlette.routing import Match

from plugin.app import create_app
from plugin.platforms.bigcommerce import install, payloads
from tests.web.support import page_settings

MANIFEST = Path(__file__).resolve().parents[3] / "manifests" / "bigcommerce.md"
HOST = "https://klarna-capture.example.com"


def served(app: Any, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


def test_every_url_of_the_manifest_is_served_for_the_method_bigcommerce_uses(
    tmp_path: Path,
) -> None:
    text = MANIFEST.read_text()
    app = create_app(page_settings(tmp_path, "http://127.0.0.1:9"))
    named = set(re.findall(rf"`{re.escape(HOST)}(/[^`]*)`", text))

    assert named == {
        "/auth/bigcommerce/callback",
        "/load",
        "/uninstall",
        "/webhooks/bigcommerce",
    }
    for path in named - {"/webhooks/bigcommerce"}:
        assert served(app, "GET", path), path
    assert served(app, "POST", "/webhooks/bigcommerce")
    assert not served(app, "POST", "/load")  # the check can tell


def test_the_manifest_names_the_scopes_and_webhooks_the_code_uses() -> None:
    text = MANIFEST.read_text()
    scopes = set(re.findall(r"`(store_v2_[a-z_]+)`", text))
    hooks = set(re.findall(r"`(store/[a-zA-Z_/]+)`", text)) - {
        "store/shipment/*",
        "store/order/*",
    }

    assert scopes == {*install.OAUTH_SCOPES, *install.OPTIONAL_SCOPES}
    assert hooks == set(payloads.WEBHOOK_SCOPES)
    assert install.OAUTH_SCOPES == ("store_v2_orders",)
