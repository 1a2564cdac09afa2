"""What the sandboxes share (plugin/sandbox/common.py), on each of them over real HTTP: the
faults endpoint sets, shows and clears faults, and a failure set there answers the next calls."""

from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from plugin.sandbox import bigcommerce, klarna, shopify, woocommerce
from plugin.sandbox.common import Sandbox
from plugin.sandbox.server import serve_in_thread

# Each sandbox's app, and the faults of its own API beside the common ones (as set here).
SANDBOXES: dict[str, tuple[Callable[[], Starlette], dict[str, int]]] = {
    "klarna": (klarna.create_app, {"rate_limit_next": 1, "retry_after": 2}),
    "shopify": (shopify.create_app, {"throttle_next": 1}),
    "woocommerce": (woocommerce.create_app, {}),
    "bigcommerce": (bigcommerce.create_app, {"rate_limit_next": 1, "reset_ms": 50}),
}


@pytest.fixture(params=sorted(SANDBOXES))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, Sandbox[Any, Any], str]]:
    make, _ = SANDBOXES[request.param]
    app = make()
    with serve_in_thread(app) as url:
        yield request.param, app.state.sandbox, url


def test_faults_are_set_shown_and_cleared(served: tuple[str, Sandbox[Any, Any], str]) -> None:
    name, sandbox, url = served
    own = SANDBOXES[name][1]
    with httpx2.Client(base_url=url, timeout=10) as client:
        answer = client.post("/sandbox/faults", json={"fail_next": 2, "fail_status": 502, **own})
        assert answer.status_code == 200
        shown = answer.json()
        assert {key: shown[key] for key in ("fail_next", "fail_status", *own)} == {
            "fail_next": 2,
            "fail_status": 502,
            **own,
        }
        assert (sandbox.faults.fail_next, sandbox.faults.fail_status) == (2, 502)

        # Omitted fields keep their value.
        kept = client.post("/sandbox/faults", json={"fail_next": 1}).json()
        assert (kept["fail_next"], kept["fail_status"]) == (1, 502)

        refused = client.post("/sandbox/faults", json={"fail_next": -1})
        assert refused.status_code == 400
        unknown = client.post("/sandbox/faults", json={"no_such_fault": 1})
        assert unknown.status_code == 400
        assert sandbox.faults.fail_next == 1

        assert client.delete("/sandbox/faults").status_code == 204
        assert (sandbox.faults.fail_next, sandbox.faults.fail_status) == (0, 503)
