"""The WooCommerce mapping: a whole order onto the neutral shipment that captures it.

WooCommerce announces an order with the `order.created` and `order.updated` webhooks, whose body is
the whole order as its REST API (v3) returns it: lines with their taxes, shipping, fees, coupons,
payment method and meta data. That body's types are `payloads.py`; this module holds the pure
mapping of an order onto the neutral `FulfillmentEvent` that captures it whole, and what the
receiver and the adapter decide from an order (worth a job, paid with Klarna, its tracking).

Mapping rules, in short (see `shipment_from`):

- WooCommerce core has no partial shipments: an order entering a capture status is captured whole
  (`complete=True`), and its capture must come to the order's `total` exactly.
- A line item's unit price is its `subtotal` (before coupons) with `subtotal_tax`, divided by the
  quantity and rounded up to a whole minor unit; its total is `total` with `total_tax`; the line's
  discount is the difference, so Klarna's `quantity * unit_price - discount = total` holds exactly
  and a discount never goes negative. Coupons are already taken off the lines they apply to
  (`subtotal` vs `total`), so `coupon_lines` become no lines of their own.
- Shipping lines become `shipping_fee` lines, fee lines `surcharge` lines (a negative fee a
  `discount` line); their amounts are `total` with `total_tax`.
- WooCommerce keeps line totals without tax whether or not its prices include tax, so both ways
  the lines are built from the same fields. The tax rate comes from the order's `tax_lines`
  (`rate_percent`, stacked and compound rates combined) when that rate explains the line's tax,
  else from the line's own tax and net amounts.
- A shop in Klarna's North America region whose prices exclude tax gets US-style lines instead:
  net lines with tax rate 0 and the order's tax as one `sales_tax` line.
- Rounding (WooCommerce rounds the order's tax per rate, not per line) can leave the lines a
  few minor units away from `total`: at most one unit per line is taken up by a `Rounding` line
  (the planner's rule); more than that is refused, naming both sums.
"""

import re
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import msgspec

from plugin import money
from plugin.capture import ROUNDING_NAME
from plugin.errors import MappingError
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce.statuses import normalize_status

# Payment method ids of Klarna's WooCommerce plugins (Klarna Payments, Klarna Checkout).
KLARNA_PAYMENT_METHODS = frozenset({"klarna_payments", "kco"})

MAX_TEXT = 255
MAX_CARRIER = 100
MAX_TRACKING_NUMBER = 100
MAX_TRACKING_URL = 1024
MAX_TRACKING_ENTRIES = 500


class WooCommerceMappingError(MappingError):
    """A WooCommerce order that cannot be turned into a capture, and why."""


# --- what an order says: worth a job, paid with Klarna --------------------------------------------


def wants_job(order: payloads.Order, statuses: frozenset[str]) -> bool:
    """Whether a delivery of `order` is worth a job: it may be captured, or it carries tracking
    for a capture made before."""
    return normalize_status(order.status) in statuses or bool(payloads.tracking_items(order))


def is_order_event(order: payloads.Order) -> bool:
    """Whether a delivery of `order` asks something of Klarna beyond a capture: the order, paid
    with Klarna, lists refunds or is cancelled or refunded (its order job reads what, from the
    REST API). An order paid otherwise never will: its refunds are no business of Klarna's."""
    status = normalize_status(order.status)
    asks = bool(order.refunds) or status in (payloads.CANCELLED, payloads.REFUNDED)
    return asks and is_klarna_payment(order)


def order_number(order: payloads.Order) -> str | None:
    """The number the customer knows (a sequential-numbers plugin's "WC-1001"), else the id."""
    return bounded_text(order.number or str(order.id))


def line_reference(sku: str | None, product_id: int | None, variation_id: int | None) -> str | None:
    """A product line's reference at Klarna: its SKU, else its product (or variation) id. A
    refund names the captured line by the same reference, so both are made here."""
    reference = sku.strip() if sku and sku.strip() else None
    if reference is None and product_id:
        reference = str(variation_id or product_id)
    return bounded_text(reference)


def shipping_reference(method_id: str) -> str | None:
    """A shipping line's reference at Klarna: its method id ("flat_rate")."""
    return bounded_text(method_id)


def is_klarna_payment(order: payloads.Order) -> bool:
    return order.payment_method.strip().lower() in KLARNA_PAYMENT_METHODS


def payment_label(order: payloads.Order) -> str:
    """How the order was paid, for a merchant to read: "Direct bank transfer (bacs)"."""
    method = order.payment_method.strip()
    title = order.payment_method_title.strip()
    if title and method and title != method:
        return f"{title} ({method})"
    return title or method or "no payment method"


def klarna_order_id(order: payloads.Order) -> str | None:
    """The Klarna order id of an order paid with Klarna: the `_wc_klarna_order_id` meta that
    Klarna's plugins write, else the order's `transaction_id`. None for an order paid otherwise,
    or one whose id is not (yet) there."""
    if not is_klarna_payment(order):
        return None
    value = payloads.meta(order, payloads.KLARNA_ORDER_ID_META)
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()[:MAX_TEXT]
    transaction = order.transaction_id.strip()
    return transaction[:MAX_TEXT] or None


# --- tracking (the Shipment Tracking extension) ---------------------------------------------------


def tracking(order: payloads.Order) -> list[Tracking]:
    """The order's parcels as tracking entries for Klarna."""
    postcode = order.shipping.postcode.strip() if order.shipping else ""
    country = order.shipping.country.strip() if order.shipping else ""
    entries: list[Tracking] = []
    for item in payloads.tracking_items(order):
        number = item.tracking_number.strip()
        name = item.custom_tracking_provider.strip() or item.tracking_provider.strip()
        link = item.custom_tracking_link.strip()
        # Shipment Tracking fills these in when it shows the link; the stored one has them open.
        link = link.replace("%1$s", number).replace("%2$s", postcode).replace("%3$s", country)
        entry = Tracking(
            carrier=carrier_code(name)[:MAX_CARRIER] if name else None,
            tracking_number=number if number and len(number) <= MAX_TRACKING_NUMBER else None,
            tracking_url=link
            if link.startswith(("https://", "http://")) and len(link) <= MAX_TRACKING_URL
            else None,
        )
        if entry not in entries and entry != Tracking():
            entries.append(entry)
    return entries[:MAX_TRACKING_ENTRIES]


def carrier_code(name: str) -> str:
    """Klarna's carrier code for a Shipment Tracking provider, whose predefined providers are
    stored by slug and often with their country ("dhl-us", "postnord-sverige-ab"): the longest
    leading words that name a carrier Klarna knows. Other names go through unchanged."""
    words = [word for word in re.split(r"[-_\s]+", name.strip()) if word]
    for length in range(len(words), 0, -1):
        # klarna_carrier gives a name it does not know back unchanged, a known one as Klarna's
        # lowercase code: upper case tells the two apart.
        candidate = " ".join(words[:length]).upper()
        code = klarna_carrier(candidate)
        if code != candidate:
            return code
    return name.strip()


# --- the mapping ---------------------------------------------------------------------------------


def shipment_from(
    order: payloads.Order,
    *,
    klarna_order_id: str,
    sales_tax: bool = False,
    shipping: Sequence[Tracking] = (),
) -> FulfillmentEvent:
    """The capture of a whole WooCommerce order, as a neutral shipment whose lines add up to the
    order's `total` exactly.

    `sales_tax` asks for US-style lines (net, tax rate 0, the tax as one sales_tax line).
    Raises WooCommerceMappingError for amounts that are not money in the order's currency, or
    lines that do not add up to the total within rounding.
    """
    currency = order.currency.strip().upper()
    try:
        money.exponent(currency)
    except money.MoneyError as error:
        raise WooCommerceMappingError(str(error)) from None
    rates = {line.rate_id: line for line in order.tax_lines}
    lines: list[ShipmentLine] = []
    for item in order.line_items:
        if item.quantity <= 0:
            continue
        lines.append(_item_line(item, rates, currency, sales_tax))
    for ship in order.shipping_lines:
        lines.append(
            _single_line(
                name=ship.method_title or "Shipping",
                reference=shipping_reference(ship.method_id),
                kind="shipping_fee",
                net=minor(ship.total, currency, f"shipping line {ship.id}"),
                tax=minor(ship.total_tax, currency, f"shipping line {ship.id}"),
                rate_taxes=ship.taxes,
                rates=rates,
                sales_tax=sales_tax,
            )
        )
    for fee in order.fee_lines:
        net = minor(fee.total, currency, f"fee line {fee.id}")
        tax = minor(fee.total_tax, currency, f"fee line {fee.id}")
        lines.append(
            _single_line(
                name=fee.name or "Fee",
                reference=None,
                kind="surcharge" if net + tax >= 0 else "discount",
                net=net,
                tax=tax,
                rate_taxes=fee.taxes,
                rates=rates,
                sales_tax=sales_tax,
            )
        )
    total = minor(order.total, currency, "the order total")
    if sales_tax:
        _settle_sales_tax(lines, minor(order.total_tax, currency, "the order's total_tax"))
    itemised = sum(_line_total(line) for line in lines)
    if sales_tax:
        itemised += sum(line.total_tax_amount or 0 for line in lines)
    residue = total - itemised
    if abs(residue) > max(len(lines), 1):
        raise WooCommerceMappingError(
            f"the order's lines come to {money.to_decimal(itemised, currency)} {currency} but its "
            f"total is {money.to_decimal(total, currency)} {currency}: more apart than rounding "
            "(a payment or discount outside the order's lines?), not capturing on a guess"
        )
    if residue:
        lines.append(_rounding(residue, lines, sales_tax))
    event = FulfillmentEvent(
        order_id=str(order.id),
        fulfillment_id=str(order.id),
        klarna_order_id=klarna_order_id,
        currency=currency,
        lines=lines,
        shipping=list(shipping),
        complete=True,
        taxes_included=not sales_tax,
        fulfillment_name=bounded_text(f"#{order.number or order.id}"),
        order_number=order_number(order),
    )
    try:  # Struct constructors do not check constraints: the event a pipeline captures must.
        return msgspec.convert(msgspec.to_builtins(event), FulfillmentEvent)
    except msgspec.ValidationError as error:
        raise WooCommerceMappingError(f"the order breaks Klarna's limits: {error}") from None


def _item_line(
    item: payloads.LineItem, rates: dict[int, payloads.TaxLine], currency: str, sales_tax: bool
) -> ShipmentLine:
    label = f"line item {item.id}"
    subtotal = minor(item.subtotal, currency, label)
    subtotal_tax = minor(item.subtotal_tax, currency, label)
    total = minor(item.total, currency, label)
    total_tax = minor(item.total_tax, currency, label)
    before, after = (subtotal, total) if sales_tax else (subtotal + subtotal_tax, total + total_tax)
    if after < 0:
        raise WooCommerceMappingError(f"{label} has a negative total")
    quantity = item.quantity
    # Rounded up, so the discount that makes the line's total exact is never negative.
    unit_price = -(-max(before, after) // quantity)
    return ShipmentLine(
        name=bounded_text(item.name) or f"Item {item.id}",
        reference=line_reference(item.sku, item.product_id, item.variation_id),
        quantity=quantity,
        unit_price=unit_price,
        total_discount_amount=quantity * unit_price - after,
        tax_rate=0 if sales_tax else _tax_rate(item.taxes, rates, total or subtotal, total_tax),
        type="physical",
        total_tax_amount=total_tax if sales_tax else None,
    )


def _single_line(
    *,
    name: str,
    reference: str | None,
    kind: str,
    net: int,
    tax: int,
    rate_taxes: Sequence[payloads.LineTax],
    rates: dict[int, payloads.TaxLine],
    sales_tax: bool,
) -> ShipmentLine:
    return msgspec.convert(
        {
            "name": bounded_text(name) or kind,
            "reference": bounded_text(reference),
            "quantity": 1,
            "unit_price": net if sales_tax else net + tax,
            "tax_rate": 0 if sales_tax else _tax_rate(rate_taxes, rates, net, tax),
            "type": kind,
            "total_tax_amount": tax if sales_tax else None,
        },
        ShipmentLine,
    )


def _tax_rate(
    taxes: Sequence[payloads.LineTax], rates: dict[int, payloads.TaxLine], net: int, tax: int
) -> int:
    """The line's tax rate in basis points. The order's rates when they explain the line's tax
    (within a unit per rate: WooCommerce rounds); otherwise, as when a negative fee's tax is
    spread over several rates, the rate the line's own amounts show."""
    if tax == 0:
        return 0
    applied = [t.id for t in taxes if _nonzero(t.total) or _nonzero(t.subtotal)]
    known = [rates[i] for i in applied if i in rates and rates[i].rate_percent is not None]
    if applied and len(known) == len(applied):
        simple = sum((r.rate_percent or Decimal(0) for r in known if not r.compound), Decimal(0))
        factor = 1 + simple / 100
        for rate in known:
            if rate.compound:
                factor *= 1 + (rate.rate_percent or Decimal(0)) / 100
        combined = _basis_points((factor - 1) * 100)
        if combined >= 0 and abs(money.tax_on(net, combined) - tax) <= len(applied):
            return combined
    if net == 0:
        return 0
    return max(0, _basis_points(Decimal(tax) * 100 / Decimal(net)))


def _settle_sales_tax(lines: list[ShipmentLine], order_tax: int) -> None:
    """US-style: the order's tax is what its lines' taxes add up to; WooCommerce rounds per rate,
    so a unit or two of difference goes to the line with the most tax."""
    gap = order_tax - sum(line.total_tax_amount or 0 for line in lines)
    if gap and lines and abs(gap) <= len(lines):
        largest = max(lines, key=lambda line: abs(line.total_tax_amount or 0))
        largest.total_tax_amount = (largest.total_tax_amount or 0) + gap
    if sum(line.total_tax_amount or 0 for line in lines) < 0:
        # Klarna takes no negative sales tax: a discount's tax then goes with the discount.
        for line in lines:
            if line.type == "discount" and line.total_tax_amount:
                line.unit_price += line.total_tax_amount
                line.total_tax_amount = 0


def _rounding(residue: int, lines: Sequence[ShipmentLine], sales_tax: bool) -> ShipmentLine:
    rate = 0
    if not sales_tax and lines:
        rate = max(lines, key=lambda line: abs(_line_total(line))).tax_rate
    return ShipmentLine(
        name=ROUNDING_NAME,
        quantity=1,
        unit_price=residue,
        tax_rate=rate,
        type="surcharge" if residue > 0 else "discount",
        total_tax_amount=0 if sales_tax else None,
    )


def _line_total(line: ShipmentLine) -> int:
    return line.quantity * line.unit_price - line.total_discount_amount


def minor(amount: str, currency: str, label: str) -> int:
    """A WooCommerce amount in minor units. Shops may show more decimals than the currency has;
    those amounts are rounded half up, and the total check catches what that loses."""
    if not amount.strip():
        return 0
    try:
        return money.to_minor(amount.strip(), currency, exact=False)
    except money.MoneyError as error:
        raise WooCommerceMappingError(f"{label}: {error}") from None


def _nonzero(amount: str) -> bool:
    try:
        return Decimal(amount.strip() or "0") != 0
    except InvalidOperation:
        return False


def _basis_points(percent: Decimal) -> int:
    return int((percent * 100).to_integral_value(rounding=ROUND_HALF_UP))


def bounded_text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:MAX_TEXT] or None


def latest(orders: Iterable[payloads.Order]) -> payloads.Order:
    """The most recent state among bodies of one order: by `date_modified_gmt`, later arrivals
    winning ties (deliveries go through wp-cron and need not arrive in order)."""
    ranked = sorted(enumerate(orders), key=lambda pair: (pair[1].date_modified_gmt or "", pair[0]))
    if not ranked:
        raise ValueError("no order bodies")
    return ranked[-1][1]
