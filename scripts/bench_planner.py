"""Planner cost for one 5-line shipment (the lines of Shopify's fulfillments/create sample): decode
the neutral shipment JSON + plan + encode the Klarna capture JSON, as a ratio to a bare
msgspec.json.decode of the same JSON into plain Python objects, measured side by side."""

import json
import sys
import timeit
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec

from plugin.capture import CapturePlan, plan_capture
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna.models import Order
from plugin.money import to_minor

# Shopify's documented sample, vendored with the tests (tests/reference/README.md).
SAMPLE = Path(__file__).resolve().parents[1] / (
    "tests/reference/shopify/fulfillments-create.sample.json"
)
TARGET = 10.0


def shipment_json() -> bytes:
    sample = json.loads(SAMPLE.read_text())
    lines = []
    for item in sample["line_items"]:
        discount = sum(Decimal(a["amount"]) for a in item["discount_allocations"])
        lines.append(
            ShipmentLine(
                reference=item["sku"],
                name=item["name"],
                quantity=item["quantity"],
                unit_price=to_minor(item["price"], "USD"),
                total_discount_amount=to_minor(discount, "USD"),
            )
        )
    event = FulfillmentEvent(
        order_id=str(sample["order_id"]),
        fulfillment_id=str(sample["id"]),
        klarna_order_id="f3392f8b-6116-4073-ab96-e330819e2c07",
        currency="USD",
        lines=lines,
        shipping=[
            Tracking(
                carrier=sample["tracking_company"],
                tracking_number=sample["tracking_number"],
                tracking_url=sample["tracking_url"],
            )
        ],
        fulfillment_name=sample["name"],
    )
    return msgspec.json.encode(event)


def main() -> int:
    raw = shipment_json()
    now = datetime.now(UTC)
    order = Order(
        order_id="f3392f8b-6116-4073-ab96-e330819e2c07",
        status="AUTHORIZED",
        order_amount=1_000_000,
        remaining_authorized_amount=1_000_000,
        purchase_currency="USD",
        fraud_status="ACCEPTED",
        expires_at=now + timedelta(days=28),
    )
    decoder = msgspec.json.Decoder(FulfillmentEvent)
    encoder = msgspec.json.Encoder()

    def ours() -> bytes:
        plan = plan_capture(decoder.decode(raw), order)
        assert isinstance(plan, CapturePlan)
        return encoder.encode(plan.capture)

    def baseline() -> object:
        return msgspec.json.decode(raw)

    captured = json.loads(ours())
    number = 20_000
    ours_best = baseline_best = float("inf")
    for _ in range(7):  # interleaved, so both see the same machine
        ours_best = min(ours_best, timeit.timeit(ours, number=number) / number)
        baseline_best = min(baseline_best, timeit.timeit(baseline, number=number) / number)
    ratio = ours_best / baseline_best
    print(
        f"shipment JSON: {len(raw)} bytes, {len(captured['order_lines'])} order lines, "
        f"captured_amount {captured['captured_amount']}"
    )
    print(f"decode + plan + encode: {ours_best * 1e6:8.2f} us per shipment")
    print(f"msgspec.json.decode:    {baseline_best * 1e6:8.2f} us per shipment")
    print(f"ratio: {ratio:.2f} (target <= {TARGET:g}) {'OK' if ratio <= TARGET else 'OVER TARGET'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
