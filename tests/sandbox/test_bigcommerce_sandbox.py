"""The fake BigCommerce over its HTTP face: what the app relies on it to enforce (tokens, one-use
codes, metafield visibility, PUT replacing staff notes, v2 paging) and what it hands a test
(signed webhooks and payloads that the real checks accept)."""

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

from plugin import signatures
from plugin.platforms.bigcommerce import mapping
from plugin.platforms.bigcommerce.signatures import verify_signed_payload
from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
    FaultSettings,
    Fee,
    Product,
    create_app,
    signed_payload_jwt,
    signed_webhook,
    webhook_body,
)

STORE = "g5cd38"


@pytest.fixture
def sandbox() -> BigCommerceSandbox:
    return BigCommerceSandbox()


@pytest.fixture
def client(sandbox: BigCommerceSandbox) -> Iterator[TestClient]:
    with TestClient(create_app(sandbox)) as client:
        yield client


def order_of(sandbox: BigCommerceSandbox, **options: Any) -> int:
    return sandbox.add_order(
        STORE,
        [
            Product("Tomatoes", "20.00", quantity=2, tax_rate="0.07", discount="2.00"),
            Product("Basil", "10.00", tax_rate="0.07"),
        ],
        shipping=Fee("4.90", "0.19"),
        **options,
    )


def test_amounts_add_up_as_bigcommerce_shows_them(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox)

    order = client.get(f"/stores/{STORE}/v2/orders/{order_id}", headers={"X-Auth-Token": token})
    products = client.get(
        f"/stores/{STORE}/v2/orders/{order_id}/products", headers={"X-Auth-Token": token}
    ).json()

    body = order.json()
    assert body["total_inc_tax"] == "52.9000"
    assert body["shipping_cost_inc_tax"] == "4.9000"
    assert body["coupon_discount"] == "2.0000"
    tomatoes = products[0]
    assert (tomatoes["price_inc_tax"], tomatoes["total_inc_tax"]) == ("20.0000", "40.0000")
    assert tomatoes["discounted_total_inc_tax"] == "38.0000"
    assert tomatoes["applied_discounts"][0]["amount"] == "2.0000"
    assert Decimal(tomatoes["price_ex_tax"]) + Decimal(tomatoes["price_tax"]) == Decimal("20")


def test_tax_exclusive_orders_add_tax_on_the_discounted_price(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = sandbox.add_order(
        STORE,
        [Product("Mug", "10.00", quantity=2, tax_rate="0.0825", discount="1.00")],
        currency="USD",
        prices_include_tax=False,
        shipping=Fee("5.00"),
    )
    headers = {"X-Auth-Token": token}

    order = client.get(f"/stores/{STORE}/v2/orders/{order_id}", headers=headers).json()
    [mug] = client.get(f"/stores/{STORE}/v2/orders/{order_id}/products", headers=headers).json()

    assert (mug["price_ex_tax"], mug["discounted_total_inc_tax"]) == ("10.0000", "20.5700")
    assert order["total_inc_tax"] == "25.5700"
    assert order["currency_code"] == order["default_currency_code"] == "USD"


def test_a_request_needs_a_token_of_that_store(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    sandbox.add_store("otherstore")
    order_id = order_of(sandbox)

    unsigned = client.get(f"/stores/{STORE}/v2/orders/{order_id}")
    other = client.get(f"/stores/otherstore/v2/orders/{order_id}", headers={"X-Auth-Token": token})
    sandbox.revoke_tokens(STORE)
    revoked = client.get(f"/stores/{STORE}/v2/orders/{order_id}", headers={"X-Auth-Token": token})

    assert [unsigned.status_code, other.status_code, revoked.status_code] == [401, 401, 401]
    assert unsigned.json()[0]["message"]


def test_lists_page_and_an_empty_page_answers_204(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox)
    product_ids = sandbox.product_ids(STORE, order_id)
    headers = {"X-Auth-Token": token}
    path = f"/stores/{STORE}/v2/orders/{order_id}/shipments"

    none_yet = client.get(path, headers=headers)
    sandbox.ship(STORE, order_id, {product_ids[0]: 1})
    sandbox.ship(STORE, order_id, {product_ids[0]: 1})
    first = client.get(path, params={"limit": 1, "page": 1}, headers=headers)
    second = client.get(path, params={"limit": 1, "page": 2}, headers=headers)
    third = client.get(path, params={"limit": 1, "page": 3}, headers=headers)

    assert none_yet.status_code == 204
    assert [len(first.json()), len(second.json()), third.status_code] == [1, 1, 204]
    assert first.json()[0]["items"] == [
        {"order_product_id": product_ids[0], "product_id": 100 + product_ids[0], "quantity": 1}
    ]
    with pytest.raises(ValueError, match="0 left"):
        sandbox.ship(STORE, order_id, {product_ids[0]: 1})


def test_put_order_replaces_the_staff_notes(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox, staff_notes="Gift: wrap in blue")
    path = f"/stores/{STORE}/v2/orders/{order_id}"

    replaced = client.put(path, json={"staff_notes": "new"}, headers={"X-Auth-Token": token})
    refused = client.put(
        path, json={"status_id": 2, "products": []}, headers={"X-Auth-Token": token}
    )

    assert replaced.status_code == 200
    assert sandbox.staff_notes(STORE, order_id) == "new"
    assert refused.status_code == 400


def test_metafields_of_other_apps_show_only_when_their_permission_allows(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    readable = order_of(sandbox, metafields={("klarna", "order_id"): "k-1"})
    private = order_of(
        sandbox, metafields={("klarna", "order_id"): "k-2"}, metafield_permission="app_only"
    )
    headers = {"X-Auth-Token": token}

    seen = client.get(
        f"/stores/{STORE}/v3/orders/{readable}/metafields",
        params={"namespace": "klarna", "key": "order_id"},
        headers=headers,
    ).json()["data"]
    hidden = client.get(f"/stores/{STORE}/v3/orders/{private}/metafields", headers=headers)
    [other_apps] = seen
    not_ours = client.put(
        f"/stores/{STORE}/v3/orders/{readable}/metafields/{other_apps['id']}",
        json={"value": "changed"},
        headers=headers,
    )

    assert other_apps["value"] == "k-1"
    assert hidden.json()["data"] == []
    assert not_ours.status_code == 403


def test_an_app_writes_its_metafield_once_then_updates_it(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox)
    path = f"/stores/{STORE}/v3/orders/{order_id}/metafields"
    headers = {"X-Auth-Token": token}
    field = {
        "namespace": "klarna_capture",
        "key": "status",
        "value": "{}",
        "permission_set": "read",
    }

    created = client.post(path, json=field, headers=headers)
    again = client.post(path, json=field, headers=headers)
    bad = client.post(path, json={**field, "permission_set": "public"}, headers=headers)
    updated = client.put(
        f"{path}/{created.json()['data']['id']}", json={"value": '{"a": 1}'}, headers=headers
    )

    assert [created.status_code, again.status_code, bad.status_code] == [200, 409, 422]
    assert updated.json()["data"]["value"] == '{"a": 1}'
    stored = sandbox.metafields(STORE, order_id)[("klarna_capture", "status")]
    assert (stored["value"], stored["client_id"]) == ('{"a": 1}', DEFAULT_CLIENT_ID)


def test_hooks_are_per_app_and_can_be_turned_back_on(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    headers = {"X-Auth-Token": token}
    hook = {"scope": "store/shipment/created", "destination": "https://app.example/webhooks"}

    created = client.post(f"/stores/{STORE}/v3/hooks", json=hook, headers=headers).json()["data"]
    sandbox.deactivate_hooks(STORE)
    listed = client.get(f"/stores/{STORE}/v3/hooks", headers=headers).json()["data"]
    client.put(
        f"/stores/{STORE}/v3/hooks/{created['id']}", json={"is_active": True}, headers=headers
    )

    assert [h["is_active"] for h in listed] == [False]
    assert sandbox.hooks(STORE)[0]["is_active"] is True
    assert created["store_hash"] == STORE


def test_hooks_keep_the_headers_given_and_their_deliveries_carry_them(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    auth = {"X-Auth-Token": token}
    scope = "store/shipment/created"
    hook = {"scope": scope, "destination": "https://app.example/webhooks", "headers": {"X-A": "1"}}

    created = client.post(f"/stores/{STORE}/v3/hooks", json=hook, headers=auth).json()["data"]
    plain = sandbox.delivery(STORE, scope, 319, 12)
    client.put(
        f"/stores/{STORE}/v3/hooks/{created['id']}", json={"headers": {"X-A": "2"}}, headers=auth
    )
    body, signed = sandbox.delivery(STORE, scope, 319, 12, signed=True)

    assert created["headers"] == {"X-A": "1"}
    assert plain[1]["X-A"] == "1"
    assert "webhook-signature" not in plain[1]
    assert sandbox.hooks(STORE)[0]["headers"] == {"X-A": "2"}
    assert signed["X-A"] == "2"
    lowered = {k.lower(): v for k, v in signed.items()}
    assert (
        signatures.verify([DEFAULT_CLIENT_SECRET.encode()], lowered, body) == signed["webhook-id"]
    )


def test_refunds_are_listed_as_bigcommerce_lists_them_and_set_the_orders_status(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    headers = {"X-Auth-Token": token}
    order_id = order_of(sandbox)
    tomatoes, basil = sandbox.product_ids(STORE, order_id)
    path = f"/stores/{STORE}/v3/orders/{order_id}/payment_actions/refunds"

    none_yet = client.get(path, headers=headers).json()
    first = sandbox.refund(STORE, order_id, {tomatoes: 1}, shipping=True, reason="Bruised")
    partly = client.get(f"/stores/{STORE}/v2/orders/{order_id}", headers=headers).json()
    second = sandbox.refund(STORE, order_id, {tomatoes: 1, basil: 1}, store_credit="5.00")
    listed = client.get(path, headers=headers).json()["data"]
    whole = client.get(f"/stores/{STORE}/v2/orders/{order_id}", headers=headers).json()
    products = client.get(f"/stores/{STORE}/v2/orders/{order_id}/products", headers=headers)

    assert none_yet == {"data": [], "meta": {}}
    assert [r["id"] for r in listed] == [first, second] == sandbox.refund_ids(STORE, order_id)
    assert (listed[0]["total_amount"], listed[0]["reason"]) == (23.9, "Bruised")
    assert [(i["item_type"], i["quantity"], i["requested_amount"]) for i in listed[0]["items"]] == [
        ("PRODUCT", 1, None),
        ("SHIPPING", None, 4.9),
    ]
    assert [(p["provider_id"], p["amount"]) for p in listed[1]["payments"]] == [
        ("storecredit", 5.0),
        ("klarna", 24.0),
    ]
    assert (partly["status_id"], partly["status"]) == (14, "Partially Refunded")
    assert (whole["status_id"], whole["status"], whole["refunded_amount"]) == (
        4,
        "Refunded",
        "52.9000",
    )
    assert [p["quantity_refunded"] for p in products.json()] == [2, 1]
    with pytest.raises(ValueError, match="0 left"):
        sandbox.refund(STORE, order_id, {tomatoes: 1})


def test_the_merchant_cancels_or_sets_a_status_and_the_order_webhooks_say_so(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox)
    for scope in ("store/order/refund/created", "store/order/statusUpdated"):
        sandbox.add_hook(STORE, scope, "https://app.example/webhooks", {"X-A": "1"})

    sandbox.cancel(STORE, order_id)
    cancelled = client.get(
        f"/stores/{STORE}/v2/orders/{order_id}", headers={"X-Auth-Token": token}
    ).json()
    status_body, status_headers = sandbox.order_delivery(
        STORE, "store/order/statusUpdated", order_id, signed=True
    )
    refund_id = sandbox.refund(STORE, order_id, amount="1.00")
    refund_body, _ = sandbox.order_delivery(STORE, "store/order/refund/created", order_id)

    assert (cancelled["status_id"], cancelled["status"]) == (5, "Cancelled")
    assert mapping.order_event_ids(status_body) == (str(order_id), 5)
    assert status_headers["X-A"] == "1"
    assert "webhook-signature" in status_headers
    assert mapping.order_event_ids(refund_body) == (str(order_id), None)
    assert msgspec.json.decode(refund_body)["data"]["refund"] == {"refund_id": refund_id}
    with pytest.raises(ValueError, match="not a BigCommerce order status"):
        sandbox.set_status(STORE, order_id, 99)


def test_codes_work_once_for_the_right_client_and_store(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    query = sandbox.authorize(STORE)
    body = {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "code": query["code"],
        "scope": query["scope"],
        "context": query["context"],
        "grant_type": "authorization_code",
        "redirect_uri": "https://app.example/auth/bigcommerce/callback",
    }

    wrong_secret = client.post("/oauth2/token", json={**body, "client_secret": "x" * 32})
    granted = client.post("/oauth2/token", json=body)
    reused = client.post("/oauth2/token", json=body)

    assert wrong_secret.status_code == 401
    assert granted.status_code == 200
    assert granted.json()["context"] == f"stores/{STORE}"
    assert granted.json()["scope"] == "store_v2_orders"
    assert reused.status_code == 400
    token = granted.json()["access_token"]
    order_id = order_of(sandbox)
    assert client.get(
        f"/stores/{STORE}/v2/orders/{order_id}", headers={"X-Auth-Token": token}
    ).is_success


def test_faults_answer_5xx_and_429_with_bigcommerces_headers(
    sandbox: BigCommerceSandbox, client: TestClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = order_of(sandbox)
    client.post("/sandbox/faults", json={"fail_next": 1, "rate_limit_next": 1, "reset_ms": 250})
    path = f"/stores/{STORE}/v2/orders/{order_id}"

    answers = [client.get(path, headers={"X-Auth-Token": token}) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 429, 200]
    assert answers[1].headers["X-Rate-Limit-Time-Reset-Ms"] == "250"
    assert [r.fault for r in sandbox.requests] == ["fail_next", "rate_limit_next", None]
    sandbox.set_faults(FaultSettings(fail_next=2))
    assert client.delete("/sandbox/faults").status_code == 204
    assert sandbox.faults.fail_next == 0


def test_signed_webhooks_and_payloads_pass_the_real_checks() -> None:
    body = webhook_body(STORE, "store/shipment/created", 319, 12)
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, body)
    token = signed_payload_jwt(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, STORE)

    lowered = {k.lower(): v for k, v in headers.items()}
    assert (
        signatures.verify([DEFAULT_CLIENT_SECRET.encode()], lowered, body) == headers["webhook-id"]
    )
    payload = verify_signed_payload(
        token, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
    )
    assert payload.store_hash == STORE
    assert payload.expires_at > time.time() + 23 * 3600
