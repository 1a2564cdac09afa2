"""`klarna-capture jobs ...` and `deliveries replay`: dead letters listed and retried, deliveries
replayed."""

import time

import anyio
import anyio.from_thread
import msgspec

from plugin.config import ensure_secret_keys, load_settings
from plugin.service import open_service
from tests.cli.support import add_shop
from tests.helpers import run_cli


def test_jobs_list_retry_and_deliveries_replay(env: dict[str, str]) -> None:
    shop = add_shop(env)
    settings = load_settings(env)

    async def a_dead_letter() -> tuple[int, int]:
        async with open_service(ensure_secret_keys(settings)[0]) as service:
            store = service.store
            delivery, _ = await store.record_delivery(
                shop["shop_id"],
                "msg_1",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id="1001-F1",
                rejected=None,
                now=time.time(),
            )
            job = await store.claim_job("test", 60, time.time())
            assert job is not None
            error = (
                '{"step": "capture", "error_code": "CAPTURE_NOT_ALLOWED", "correlation_id": "c-1"}'
            )
            assert await store.bury_job(job.id, "test", error, time.time())
            return job.id, delivery

    job_id, delivery_id = anyio.run(a_dead_letter)
    header, line = run_cli(env, "jobs", "list", "--dead").stdout.splitlines()
    assert header.split() == [
        "JOB_ID",
        "STATE",
        "KIND",
        "SHOP_ID",
        "KEY",
        "ATTEMPTS",
        "UPDATED",
        "ERROR",
    ]
    assert line.split()[:3] == [str(job_id), "dead", "fulfillment"]
    assert line.endswith("capture: CAPTURE_NOT_ALLOWED (correlation_id c-1)")
    [dead] = msgspec.json.decode(run_cli(env, "jobs", "list", "--dead", "--json").stdout)
    assert (dead["job_id"], dead["state"], dead["shop_id"]) == (job_id, "dead", shop["shop_id"])
    assert dead["error"] == "capture: CAPTURE_NOT_ALLOWED (correlation_id c-1)"
    assert run_cli(env, "jobs", "retry", str(job_id)).stdout == f"job {job_id} queued again\n"
    assert run_cli(env, "jobs", "list", "--dead").stdout == ""
    assert run_cli(env, "jobs", "list").stdout.splitlines()[1].split()[:2] == [
        str(job_id),
        "queued",
    ]
    replayed = run_cli(env, "deliveries", "replay", str(delivery_id)).stdout
    assert replayed == f"delivery {delivery_id} replayed: job {job_id} queued\n"


def test_a_finished_job_has_nothing_to_retry(env: dict[str, str]) -> None:
    shop = add_shop(env)

    async def a_finished_job() -> int:
        settings = ensure_secret_keys(load_settings(env))[0]
        async with open_service(settings) as service:
            await service.store.record_delivery(
                shop["shop_id"],
                "msg_1",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id="1001-F1",
                rejected=None,
                now=time.time(),
            )
            job = await service.store.claim_job("test", 60, time.time())
            assert job is not None
            assert await service.store.finish_job(job.id, "test", time.time())
            return job.id

    job_id = anyio.run(a_finished_job)
    done = run_cli(env, "jobs", "retry", str(job_id), check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"klarna-capture: job {job_id} is done: there is nothing to retry"
    )
    [job] = msgspec.json.decode(run_cli(env, "jobs", "list", "--json").stdout)
    assert (job["job_id"], job["state"]) == (job_id, "done")
