"""`klarna-capture prune`: what the retention windows let go, counted and removed."""

import time

import anyio
import anyio.from_thread

from plugin.config import ensure_secret_keys, load_settings
from plugin.service import open_service
from tests.cli.support import add_shop
from tests.helpers import run_cli


def test_prune_dry_run_changes_nothing_and_prune_prints_what_it_deleted(
    env: dict[str, str], store_env: dict[str, str]
) -> None:
    store_env = {**env, **store_env}  # this module's settings, on each store
    shop = add_shop(store_env)
    settings = ensure_secret_keys(load_settings(store_env))[0]
    month_ago = time.time() - 31 * 86400

    async def shipments() -> dict[str, int]:
        """A settled shipment and a dead letter, both a month old; their delivery row ids."""
        async with open_service(settings) as service:
            rows = {}
            for fulfillment_id in ("1001-F1", "1002-F1"):
                rows[fulfillment_id], _ = await service.store.record_delivery(
                    shop["shop_id"],
                    f"msg_{fulfillment_id}",
                    body=b'{"name": "Ada"}',
                    event_type="fulfillment.created",
                    fulfillment_id=fulfillment_id,
                    rejected=None,
                    now=month_ago,
                )
                job = await service.store.claim_job("test", 60, month_ago)
                assert job is not None
                if fulfillment_id == "1001-F1":
                    assert await service.store.finish_job(job.id, "test", month_ago)
                else:
                    assert await service.store.bury_job(job.id, "test", "{}", month_ago)
            return rows

    async def bodies(rows: dict[str, int]) -> dict[str, bytes]:
        async with open_service(settings) as service:
            found = {key: await service.store.get_delivery(row) for key, row in rows.items()}
            return {key: delivery.body for key, delivery in found.items() if delivery}

    rows = anyio.run(shipments)
    dry = run_cli(store_env, "prune", "--dry-run").stdout.splitlines()
    assert "deliveries.body              1 bodies would be emptied" in dry
    assert "jobs                         1 rows would be deleted" in dry
    assert "deliveries                   0 rows would be deleted" in dry
    assert anyio.run(bodies, rows) == {"1001-F1": b'{"name": "Ada"}', "1002-F1": b'{"name": "Ada"}'}
    assert "1001-F1" in run_cli(store_env, "jobs", "list").stdout

    done = run_cli(store_env, "prune").stdout.splitlines()
    assert "deliveries.body              1 bodies emptied" in done
    assert "jobs                         1 rows deleted" in done
    # The dead letter keeps its body; the settled shipment's is gone, and cannot be replayed.
    assert anyio.run(bodies, rows) == {"1001-F1": b"", "1002-F1": b'{"name": "Ada"}'}
    listed = run_cli(store_env, "jobs", "list").stdout
    assert "1001-F1" not in listed
    assert "1002-F1" in listed
    replay = run_cli(store_env, "deliveries", "replay", str(rows["1001-F1"]), check=False)
    assert replay.returncode == 1
    assert "body was removed" in replay.stderr
    assert "deliveries.body              0 bodies emptied" in run_cli(store_env, "prune").stdout
