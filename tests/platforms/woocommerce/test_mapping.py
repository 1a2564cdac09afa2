"""The WooCommerce adapter's pure parts: signature, ping, site URL, statuses, the Klarna order id,
tracking, and the mapping of an order (as the fake computes it, the way WooCommerce does) onto a
capture whose lines keep Klarna's rules and add up to the order's total exactly."""

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin import signatures
from plugin.capture import CapturePlan, klarna_lines, line_problems, plan_capture
from plugin.events import Tracking
from plugin.klarna.models import Order as KlarnaOrder
from plugin.money import to_minor
from plugin.platforms.woocommerce import mapping as woocommerce
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce import signatures as woo_signatures
from plugin.platforms.woocommerce.mapping import (
    WooCommerceMappingError,
    carrier_code,
    klarna_order_id,
    shipment_from,
)
from plugin.platforms.woocommerce.payloads import Order, decode_order
from plugin.platforms.woocommerce.site import normalize_site_url, same_site
from plugin.platforms.woocommerce.statuses import parse_statuses
from plugin.sandbox.woocommerce import (
    Coupon,
    Fee,
    Item,
    Parcel,
    Shipping,
    WooCommerceSandbox,
    php_json,
)
from plugin.sandbox.woocommerce import signature as woocommerce_signature
from tests.helpers import KLARNA_ORDER_ID

SITE = "shop"


def placed(
    items: list[Item],
    *,
    prices_include_tax: bool = True,
    round_at_subtotal: bool = False,
    currency: str = "EUR",
    rates: tuple[str, ...] = ("25.0000", "12.0000"),
    compound: tuple[str, ...] = (),
    **order: Any,
) -> tuple[WooCommerceSandbox, int]:
    """An order on a fresh site whose tax rates are ids 1, 2, ... in the order given."""
    sandbox = WooCommerceSandbox()
    sandbox.add_site(
        SITE,
        currency=currency,
        prices_include_tax=prices_include_tax,
        round_tax_at_subtotal=round_at_subtotal,
    )
    for rate in rates:
        sandbox.add_tax_rate(SITE, rate)
    for rate in compound:
        sandbox.add_tax_rate(SITE, rate, label="Compound", compound=True)
    return sandbox, sandbox.add_order(SITE, items, **order)


def order_of(sandbox: WooCommerceSandbox, order_id: int) -> Order:
    return decode_order(php_json(sandbox.order_json(SITE, order_id)))


def captured_lines(order: Order, *, sales_tax: bool = False) -> list[tuple[Any, ...]]:
    event = shipment_from(order, klarna_order_id=KLARNA_ORDER_ID, sales_tax=sales_tax)
    lines = klarna_lines(event)
    assert [problem for line in lines for problem in line_problems(line)] == []
    assert sum(line.total_amount for line in lines) == to_minor(order.total, order.currency)
    return [
        (
            line.name,
            line.type,
            line.quantity,
            line.unit_price,
            line.total_discount_amount,
            line.total_amount,
            line.tax_rate,
            line.total_tax_amount,
        )
        for line in lines
    ]


# --- the webhook ---------------------------------------------------------------------------------


def test_the_signature_is_checked_over_the_raw_body_with_the_whsec_text() -> None:
    secret = signatures.new_secret()
    key = signatures.parse_secret(secret)
    body = b'{"id":1}'
    good = woocommerce_signature(secret, body)
    assert woo_signatures.webhook_secret(key) == secret.encode()

    woo_signatures.verify_signature([b"old-secret", woo_signatures.webhook_secret(key)], good, body)
    for header, reason in [
        (None, "missing X-WC-Webhook-Signature"),
        ("", "missing"),
        ("not base64", "not a base64 SHA-256 digest"),
        ("AAAA", "not a base64 SHA-256 digest"),
        (woocommerce_signature("whsec_other", body), "matches no webhook secret"),
    ]:
        with pytest.raises(signatures.WebhookVerificationError, match=reason):
            woo_signatures.verify_signature([secret.encode()], header, body)
    with pytest.raises(signatures.WebhookVerificationError):
        woo_signatures.verify_signature([secret.encode()], good, body + b" ")
    with pytest.raises(ValueError, match="empty webhook secret"):
        woo_signatures.verify_signature([b""], good, body)


def test_the_ping_is_only_its_exact_form_body() -> None:
    assert payloads.is_ping(b"webhook_id=12")
    assert payloads.is_ping(b"webhook_id=12\n")
    for body in (b"webhook_id=", b"webhook_id=12&x=1", b'{"webhook_id": 12}', b""):
        assert not payloads.is_ping(body)


def test_deliveries_are_keyed_by_their_content() -> None:
    assert payloads.delivery_key(b"a") == payloads.delivery_key(b"a")
    assert payloads.delivery_key(b"a") != payloads.delivery_key(b"b")
    assert payloads.delivery_key(b"a").startswith("sha256:")


@pytest.mark.parametrize(
    ("entered", "stored"),
    [
        ("https://Shop.Example/", "https://shop.example"),
        ("  https://shop.example:443/wp/ ", "https://shop.example/wp"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("HTTPS://shop.example/Store", "https://shop.example/Store"),
        ("http://127.0.0.1:8300/shop", "http://127.0.0.1:8300/shop"),
        ("http://localhost/", "http://localhost"),
        ("https://[2001:db8::1]/", "https://[2001:db8::1]"),
    ],
)
def test_site_urls_are_stored_in_one_spelling(entered: str, stored: str) -> None:
    assert normalize_site_url(entered) == stored


@pytest.mark.parametrize(
    ("entered", "problem"),
    [
        ("shop.example", "starts with https"),
        ("ftp://shop.example", "starts with https"),
        ("http://shop.example", "https only"),
        ("https://user:pw@shop.example", "no user name"),
        ("https://shop.example/?p=1", "no user name, query"),
        ("https://shop.example/#top", "fragment"),
        ("https://", "names its host"),
        ("https://shop.example:port", "port"),
        ("https://shop example", "Enter the site's address"),
        ("", "Enter the site's address"),
    ],
)
def test_site_urls_that_cannot_work_are_refused_with_a_reason(entered: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        normalize_site_url(entered)


def test_the_source_header_is_compared_as_a_site_url() -> None:
    assert same_site("https://SHOP.example/", "https://shop.example")
    assert same_site("https://shop.example/wp/", "https://shop.example/wp")
    assert not same_site("https://shop.example/", "https://shop.example/wp")
    assert not same_site("http://shop.example/", "https://shop.example")
    assert not same_site("https://evil.example/", "https://shop.example")
    assert not same_site(None, "https://shop.example")
    assert not same_site("https://shop.example/", None)
    assert not same_site("not a url", "https://shop.example")


def test_capture_statuses_are_slugs_without_the_wc_prefix() -> None:
    assert parse_statuses("completed, wc-Shipped  shipped") == ["completed", "shipped"]
    assert parse_statuses("completed\nready-to-ship") == ["completed", "ready-to-ship"]
    for text, problem in [
        ("", "at least one"),
        (" , ", "at least one"),
        ("completed; shipped", "not an order status"),
        ("a" * 18, "at most 17"),
        (",".join(f"s{n}" for n in range(21)), "At most 20"),
    ]:
        with pytest.raises(ValueError, match=problem):
            parse_statuses(text)


# --- payment and the Klarna order id -------------------------------------------------------------


def test_the_klarna_order_id_is_the_meta_else_the_transaction_of_a_klarna_payment() -> None:
    base = {"id": 1, "status": "completed", "currency": "EUR", "total": "1.00"}
    meta = [{"id": 9, "key": "_wc_klarna_order_id", "value": " k-meta "}]

    def order(**fields: Any) -> Order:
        return msgspec.convert({**base, **fields}, Order)

    assert klarna_order_id(order(payment_method="kco", meta_data=meta)) == "k-meta"
    assert klarna_order_id(order(payment_method="klarna_payments", transaction_id="k-t")) == "k-t"
    both = order(payment_method="klarna_payments", transaction_id="k-t", meta_data=meta)
    assert klarna_order_id(both) == "k-meta"
    assert klarna_order_id(order(payment_method="klarna_payments")) is None
    # Paid otherwise: a Klarna id left over from an abandoned Klarna checkout does not count.
    assert klarna_order_id(order(payment_method="stripe", meta_data=meta)) is None
    assert woocommerce.payment_label(order(payment_method="bacs")) == "bacs"
    titled = order(payment_method="bacs", payment_method_title="Direct bank transfer")
    assert woocommerce.payment_label(titled) == "Direct bank transfer (bacs)"
    assert woocommerce.payment_label(order()) == "no payment method"


# --- tracking ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "code"),
    [
        ("dhl-us", "dhl"),
        ("DHL Express", "dhl"),
        ("postnord-sverige-ab", "postnord"),
        ("royal-mail", "royal-mail"),
        ("australia-post", "australia-post"),
        ("usps", "usps"),
        ("fedex", "fedex"),
        ("Budbee", "budbee"),
        ("Ferry Couriers Ltd", "Ferry Couriers Ltd"),
    ],
)
def test_shipment_tracking_providers_map_to_klarnas_carrier_codes(provider: str, code: str) -> None:
    assert carrier_code(provider) == code


def test_tracking_items_become_parcels_and_links_get_their_placeholders_filled() -> None:
    sandbox, order_id = placed([Item("Mug", "10.00", taxes=[1])])
    sandbox.add_tracking(SITE, order_id, Parcel("JJD1", provider="dhl-us"))
    sandbox.add_tracking(
        SITE,
        order_id,
        Parcel(
            "X9",
            custom_provider="Ferry Couriers",
            custom_link="https://ferry.example/t/%1$s?zip=%2$s&c=%3$s",
        ),
    )
    sandbox.add_tracking(SITE, order_id, Parcel("N" * 101, provider="ups"))
    sandbox.add_tracking(SITE, order_id, Parcel("JJD1", provider="dhl-us"))  # entered twice
    order = order_of(sandbox, order_id)

    assert woocommerce.tracking(order) == [
        Tracking(carrier="dhl", tracking_number="JJD1"),
        Tracking(
            carrier="Ferry Couriers",
            tracking_number="X9",
            tracking_url="https://ferry.example/t/X9?zip=40003&c=DE",
        ),
        # A tracking number beyond Klarna's 100 characters is dropped, not cut.
        Tracking(carrier="ups"),
    ]
    assert woocommerce.wants_job(order, frozenset({"completed"}))


def test_tracking_meta_that_is_not_shipment_trackings_is_left_out() -> None:
    sandbox, order_id = placed([Item("Mug", "10.00")])
    sandbox.set_meta(
        SITE,
        order_id,
        "_wc_shipment_tracking_items",
        [{"tracking_number": ["not", "text"]}, "junk", {"tracking_provider": "ups"}],
    )
    assert woocommerce.tracking(order_of(sandbox, order_id)) == []
    sandbox.set_meta(SITE, order_id, "_wc_shipment_tracking_items", "a:0:{}")
    order = order_of(sandbox, order_id)
    assert woocommerce.tracking(order) == []
    assert not woocommerce.wants_job(order, frozenset({"completed"}))


# --- the mapping ---------------------------------------------------------------------------------


def test_prices_with_tax_coupon_shipping_and_fee() -> None:
    sandbox, order_id = placed(
        [
            Item("Tomatoes", "9.99", quantity=3, sku="TOM", taxes=[2]),
            Item("Mug", "129.00", sku="MUG", taxes=[1]),
        ],
        shipping=[Shipping("PostNord", "49.00", method_id="flat_rate", taxes=[1])],
        fees=[Fee("Gift wrap", "20.00", taxes=[1])],
        coupons=[Coupon("SUMMER10", "10")],
    )
    order = order_of(sandbox, order_id)
    assert (order.total, order.discount_total, order.coupon_lines[0].code) == (
        "229.33",
        "12.99",
        "SUMMER10",
    )

    assert captured_lines(order) == [
        ("Tomatoes", "physical", 3, 999, 299, 2698, 1200, 289),
        ("Mug", "physical", 1, 12900, 1290, 11610, 2500, 2322),
        ("PostNord", "shipping_fee", 1, 6125, 0, 6125, 2500, 1225),
        ("Gift wrap", "surcharge", 1, 2500, 0, 2500, 2500, 500),
    ]
    event = shipment_from(order, klarna_order_id=KLARNA_ORDER_ID)
    assert (event.order_id, event.fulfillment_id, event.fulfillment_name) == (
        str(order_id),
        str(order_id),
        f"#{order_id}",
    )
    assert (event.complete, event.taxes_included, event.currency) == (True, True, "EUR")
    assert [line.reference for line in event.lines] == ["TOM", "MUG", "flat_rate", None]


def test_prices_without_tax_give_the_same_kind_of_lines() -> None:
    sandbox, order_id = placed(
        [Item("Tomatoes", "7.99", quantity=3, taxes=[2]), Item("Mug", "103.20", taxes=[1])],
        prices_include_tax=False,
        shipping=[Shipping("PostNord", "49.00", taxes=[1])],
        coupons=[Coupon("TENOFF", "10.00", kind="fixed_cart")],
    )
    order = order_of(sandbox, order_id)
    assert order.prices_include_tax is False

    assert captured_lines(order) == [
        # 23.97 + 12 % = 26.85 before its 1.89 share of the coupon (and that share's tax)
        ("Tomatoes", "physical", 3, 895, 212, 2473, 1200, 265),
        ("Mug", "physical", 1, 12900, 1014, 11886, 2500, 2377),
        ("PostNord", "shipping_fee", 1, 6125, 0, 6125, 2500, 1225),
    ]


def test_a_unit_price_that_does_not_divide_is_rounded_up_and_the_rest_is_discount() -> None:
    # 3 for 10.00: WooCommerce keeps the line, not the unit price.
    sandbox, order_id = placed([Item("Bundle", "3.3333", quantity=3, taxes=[1])])
    order = order_of(sandbox, order_id)
    assert order.line_items[0].subtotal == "8.00"
    assert captured_lines(order) == [("Bundle", "physical", 3, 334, 2, 1000, 2500, 200)]


def test_us_style_sales_tax_is_one_line_with_the_orders_tax() -> None:
    sandbox, order_id = placed(
        [Item("Beans", "14.99", quantity=3, taxes=[1, 2]), Item("Filter", "0.99", taxes=[1])],
        currency="USD",
        prices_include_tax=False,
        round_at_subtotal=True,
        rates=("7.2500", "1.0000"),
        shipping=[Shipping("UPS", "8.50")],
        coupons=[Coupon("FIVE", "5")],
    )
    order = order_of(sandbox, order_id)
    lines = captured_lines(order, sales_tax=True)

    assert [line[:2] + line[5:] for line in lines] == [
        ("Beans", "physical", 4272, 0, 0),
        ("Filter", "physical", 95, 0, 0),
        ("UPS", "shipping_fee", 850, 0, 0),
        ("Sales tax", "sales_tax", to_minor(order.total_tax, "USD"), 0, 0),
    ]


def test_tax_rounded_per_rate_is_taken_up_by_a_rounding_line() -> None:
    sandbox, order_id = placed(
        [Item(f"Seed {n}", "0.10", taxes=[1]) for n in range(3)],
        prices_include_tax=False,
        round_at_subtotal=True,
    )
    order = order_of(sandbox, order_id)
    assert (order.total, order.total_tax) == ("0.38", "0.08")

    assert captured_lines(order)[-1] == ("Rounding", "discount", 1, -1, 0, -1, 2500, 0)
    # US-style, the difference is tax: it goes onto the sales tax, no rounding line.
    assert [line[0] for line in captured_lines(order, sales_tax=True)] == [
        "Seed 0",
        "Seed 1",
        "Seed 2",
        "Sales tax",
    ]


def test_a_negative_fee_is_a_discount_line_at_the_rate_its_tax_shows() -> None:
    sandbox, order_id = placed(
        [Item("Mug", "125.00", taxes=[1]), Item("Bread", "56.00", taxes=[2])],
        fees=[Fee("Loyalty discount", "-10.00", taxes=[1, 2])],
    )
    order = order_of(sandbox, order_id)
    # Spread over both rates, the fee's tax is no single rate's: 10.00 net, 3.70 tax.
    assert order.fee_lines[0].total_tax == "-3.70"

    assert captured_lines(order)[-1] == (
        "Loyalty discount",
        "discount",
        1,
        -1370,
        0,
        -1370,
        3700,
        -370,
    )


def test_compound_rates_combine() -> None:
    sandbox, order_id = placed(
        [Item("Maple syrup", "20.00", taxes=[1, 2])],
        prices_include_tax=False,
        rates=("5.0000",),
        compound=("9.9750",),
    )
    order = order_of(sandbox, order_id)
    # 5 % on 20.00, then 9.975 % on 21.00: 1.00 + 2.09 (15.47375 % in all).
    assert order.line_items[0].total_tax == "3.09"
    assert captured_lines(order) == [("Maple syrup", "physical", 1, 2309, 0, 2309, 1547, 309)]


def test_without_rate_percent_the_rate_comes_from_the_amounts() -> None:
    sandbox, order_id = placed([Item("Mug", "10.00", taxes=[1])])
    raw = sandbox.order_json(SITE, order_id)
    for line in raw["tax_lines"]:
        del line["rate_percent"]  # older WooCommerce
    assert captured_lines(decode_order(php_json(raw))) == [
        ("Mug", "physical", 1, 1000, 0, 1000, 2500, 200)
    ]


def test_a_free_line_and_an_untaxed_line() -> None:
    sandbox, order_id = placed(
        [Item("Sample", "4.00", taxes=[1])],
        shipping=[Shipping("Letter", "4.90")],
        coupons=[Coupon("FREE", "100")],
    )
    assert captured_lines(order_of(sandbox, order_id)) == [
        ("Sample", "physical", 1, 400, 400, 0, 0, 0),
        ("Letter", "shipping_fee", 1, 490, 0, 490, 0, 0),
    ]


@pytest.mark.parametrize(
    ("currency", "price", "unit"), [("JPY", "1500", 1500), ("KWD", "2.125", 2125)]
)
def test_currencies_with_zero_and_three_decimals(currency: str, price: str, unit: int) -> None:
    sandbox, order_id = placed([Item("Tea", price, quantity=2, taxes=[1])], currency=currency)
    [line] = captured_lines(order_of(sandbox, order_id))
    assert line[3] == unit


def test_lines_that_do_not_add_up_to_the_total_are_refused() -> None:
    sandbox, order_id = placed([Item("Mug", "10.00", taxes=[1])])
    raw = sandbox.order_json(SITE, order_id)
    raw["total"] = "5.00"  # a payment plugin took 5.00 off outside the lines
    with pytest.raises(
        WooCommerceMappingError, match=r"lines come to 10.00 EUR but its total is 5.00"
    ):
        shipment_from(decode_order(php_json(raw)), klarna_order_id=KLARNA_ORDER_ID)


def test_amounts_that_are_not_money_are_refused_naming_the_line() -> None:
    sandbox, order_id = placed([Item("Mug", "10.00", taxes=[1])])
    raw = sandbox.order_json(SITE, order_id)
    raw["line_items"][0]["total"] = "ten"
    with pytest.raises(WooCommerceMappingError, match=r"line item \d+: not a decimal amount"):
        shipment_from(decode_order(php_json(raw)), klarna_order_id=KLARNA_ORDER_ID)
    raw["currency"] = "XYZ"
    with pytest.raises(WooCommerceMappingError, match="unknown currency"):
        shipment_from(decode_order(php_json(raw)), klarna_order_id=KLARNA_ORDER_ID)


def test_the_webhook_body_is_decoded_as_wordpress_writes_it() -> None:
    sandbox, order_id = placed([Item("Mug/Cup", "10.00", taxes=[1])])
    body = sandbox.webhook(SITE, order_id, secret="whsec_x").body
    assert b"Mug\\/Cup" in body  # wp_json_encode escapes slashes
    assert decode_order(body).line_items[0].name == "Mug/Cup"
    assert json.loads(body)["line_items"][0]["price"] == 8.0  # a float on the wire, never read


# --- any order WooCommerce computes --------------------------------------------------------------

prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("999.99"), places=2)
rates = st.lists(st.sampled_from([1, 2, 3]), max_size=2, unique=True)
items = st.builds(
    Item,
    name=st.sampled_from(["Tomatoes", "Mug", "Bread"]),
    price=prices.map(str),
    quantity=st.integers(1, 7),
    taxes=rates,
)
coupons = st.one_of(
    st.builds(Coupon, code=st.just("PCT"), amount=st.integers(1, 60).map(str)),
    st.builds(
        Coupon,
        code=st.just("FIX"),
        amount=st.decimals(Decimal("0.01"), Decimal("30"), places=2).map(str),
        kind=st.just("fixed_cart"),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(items, min_size=1, max_size=5),
    shipping=st.lists(st.builds(Shipping, cost=prices.map(str), taxes=rates), max_size=2),
    fees=st.lists(
        st.builds(
            Fee,
            name=st.just("Fee"),
            amount=st.decimals(Decimal("-5"), Decimal("20"), places=2).map(str),
            taxes=rates,
        ),
        max_size=2,
    ),
    discounts=st.lists(coupons, max_size=2),
    prices_include_tax=st.booleans(),
    round_at_subtotal=st.booleans(),
    sales_tax=st.booleans(),
)
def test_any_order_maps_to_lines_klarna_takes_adding_up_to_its_total(
    lines: list[Item],
    shipping: list[Shipping],
    fees: list[Fee],
    discounts: list[Coupon],
    prices_include_tax: bool,
    round_at_subtotal: bool,
    sales_tax: bool,
) -> None:
    sandbox, order_id = placed(
        lines,
        prices_include_tax=prices_include_tax,
        round_at_subtotal=round_at_subtotal,
        rates=("25.0000", "12.0000", "7.2500"),
        shipping=shipping,
        fees=fees,
        coupons=discounts,
    )
    order = order_of(sandbox, order_id)
    total = to_minor(order.total, "EUR")
    if total <= 0:
        return
    event = shipment_from(order, klarna_order_id=KLARNA_ORDER_ID, sales_tax=sales_tax)
    klarna = klarna_lines(event)
    assert [problem for line in klarna for problem in line_problems(line)] == []
    assert sum(line.total_amount for line in klarna) == total
    assert sum(1 for line in klarna if line.name == "Rounding") <= 1
    authorized = KlarnaOrder(
        order_id="k",
        status="AUTHORIZED",
        order_amount=total,
        remaining_authorized_amount=total,
        purchase_currency="EUR",
        fraud_status="ACCEPTED",
    )
    plan = plan_capture(event, authorized)
    assert isinstance(plan, CapturePlan)
    assert (plan.capture.captured_amount, plan.rounding_adjustment) == (total, 0)


def test_the_shipment_carries_the_order_number_the_customer_knows() -> None:
    sandbox, order_id = placed([Item("Mug", "129.00", sku="MUG", taxes=[1])])
    order = order_of(sandbox, order_id)

    plain = shipment_from(order, klarna_order_id=KLARNA_ORDER_ID)
    numbered = shipment_from(
        msgspec.structs.replace(order, number="WC-1001"), klarna_order_id=KLARNA_ORDER_ID
    )

    assert plain.order_number == str(order_id)
    assert numbered.order_number == "WC-1001"
