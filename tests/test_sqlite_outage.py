"""The SQLite file locked by another process past the store's wait (KLARNA_CAPTURE_DATABASE_
TIMEOUT_SECONDS): deliveries are refused with 503 and Retry-After (so the storefront delivers them
again), /readyz says not ready, the workers wait; once the lock is gone all carry on."""

from pathlib import Path

import msgspec

from plugin.sandbox.klarna import KlarnaSandbox
from tests.helpers import TOMATOES, shipment, wait_until
from tests.web.support import captured, database, page_settings, running


def test_a_locked_sqlite_file_is_a_503_and_nothing_stops(
    tmp_path: Path, klarna_url: str, klarna_sandbox: KlarnaSandbox
) -> None:
    settings = page_settings(
        tmp_path, klarna_url, extra={"KLARNA_CAPTURE_DATABASE_TIMEOUT_SECONDS": "1"}
    )
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(2)
    ]
    with running(settings) as site:
        shop, secret = site.create_shop()

        def deliver(index: int) -> int:
            event = shipment(orders[index].order_id, f"F{index}")
            return site.deliver(shop.id, secret, event, delivery_id=f"msg_{index}").status_code

        assert deliver(0) == 200
        wait_until(lambda: captured(settings, shop.id, "F0"), what="for the first capture")

        with database(settings) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            refused = site.deliver(
                shop.id, secret, shipment(orders[1].order_id, "F1"), delivery_id="msg_1"
            )
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) > 0
            assert msgspec.json.decode(refused.content)["status"] == "unavailable"
            assert site.client.get("/readyz").status_code == 503
            other.execute("ROLLBACK")

        assert site.client.get("/readyz").status_code == 200
        assert deliver(1) == 200  # the storefront's redelivery
        wait_until(lambda: captured(settings, shop.id, "F1"), what="for the workers to carry on")
    assert [len(order.captures) for order in orders] == [1, 1]
