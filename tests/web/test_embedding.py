"""What a storefront admin's embedding may put into a page (pages.Embedding), and the CSP a page
gets from it: exactly its scripts, by their whole URLs, and none without one."""

from typing import Any

import pytest

from plugin.web.pages import Embedding
from plugin.web.routes import content_security_policy

SCRIPT = "https://cdn.example.com/cloud/bridge.js"


def directives(csp: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}


def test_a_page_without_an_embedding_runs_no_script() -> None:
    csp = directives(content_security_policy(None))
    assert "script-src" not in csp
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]


def test_an_embedded_page_may_run_exactly_its_embeddings_scripts() -> None:
    other = "https://cdn.example.com/cloud/other.js"
    csp = directives(content_security_policy(("https://admin.example.com",), (SCRIPT, other)))
    assert csp["script-src"] == [SCRIPT, other]
    assert csp["default-src"] == ["'none'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["https://admin.example.com"]


def test_an_embedding_as_a_platform_describes_it_is_accepted() -> None:
    embedding = Embedding(
        meta=(("shopify-api-key", "0123456789abcdef"),),
        scripts=(SCRIPT,),
        stylesheets=("/admin/static/polaris.css",),
        nav="ui-nav-menu",
    )
    assert embedding.scripts == (SCRIPT,)


@pytest.mark.parametrize(
    "fields",
    [
        {"scripts": ("http://cdn.example.com/bridge.js",)},  # not https
        {"scripts": ("https://cdn.example.com",)},  # a whole origin, not a script
        {"scripts": ("https://cdn.example.com/bridge.js?v=1",)},
        {"scripts": ("https://cdn.example.com/bridge.js 'unsafe-inline'",)},
        {"scripts": ("https://cdn.example.com/a.js; script-src *",)},
        {"scripts": ("'unsafe-inline'",)},
        {"stylesheets": ("https://cdn.example.com/look.css",)},
        {"stylesheets": ("/admin/static/../app.css",)},
        {"meta": (("1st", "x"),)},
        {"meta": (("Api Key", "x"),)},
        {"meta": (("api-key", "x" * 256),)},
        {"nav": "nav"},  # not a custom element
        {"nav": "ui-nav-menu onclick"},
    ],
)
def test_an_embedding_refuses_what_would_widen_the_page(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"embedding|stylesheets|custom element"):
        Embedding(**fields)
