"""jobs (list, retry): the queue's jobs, and a dead letter run again."""

import argparse
import sys
import time
from typing import Any

import msgspec

from plugin.cli import arguments, running
from plugin.service import Service
from plugin.store.records import Job


def add_commands(commands: Any) -> None:
    jobs = arguments.command(commands, "jobs", "list jobs, retry a dead letter")
    job_commands = arguments.commands(jobs, "jobs_command", "JOBS_COMMAND")
    job_list = arguments.command(job_commands, "list", "list recent jobs, newest first")
    job_list.add_argument("--dead", action="store_true", help="dead letters only")
    job_list.add_argument(
        "--limit",
        type=arguments.limit,
        default=50,
        help=f"at most this many, 1 to {arguments.MAX_LIMIT}",
    )
    arguments.listing(job_list)
    job_list.set_defaults(run=lambda args: running.run(_jobs_list, args))
    retry = arguments.command(
        job_commands, "retry", "run a job that did not finish again, from its first attempt"
    )
    retry.add_argument("job_id", type=int, help="the job's id, as jobs list shows it")
    retry.set_defaults(run=lambda args: running.run(_jobs_retry, args))


def _job_row(job: Job) -> dict[str, Any]:
    error = None
    if job.last_error:
        last = msgspec.json.decode(job.last_error)
        error = f"{last.get('step')}: {last.get('error_code')}"
        if last.get("correlation_id"):
            error += f" (correlation_id {last['correlation_id']})"
    return {
        "job_id": job.id,
        "state": job.state,
        "kind": job.kind,
        "shop_id": job.shop_id,
        "key": job.key,
        "attempts": job.attempts,
        "updated": running.iso(job.updated_at),
        "error": error,
    }


async def _jobs_list(service: Service, args: argparse.Namespace) -> int:
    jobs = await service.store.list_jobs(dead_only=args.dead, limit=args.limit)
    return running.print_list(
        args,
        "dead letters" if args.dead else "jobs",
        ("job_id", "state", "kind", "shop_id", "key", "attempts", "updated", "error"),
        [_job_row(job) for job in jobs],
    )


async def _jobs_retry(service: Service, args: argparse.Namespace) -> int:
    job = await service.store.get_job(args.job_id)
    if job is None:
        print(f"klarna-capture: no job {args.job_id}", file=sys.stderr)
        return 1
    if job.state == "done":
        print(
            f"klarna-capture: job {job.id} is done: there is nothing to retry "
            "(deliveries replay processes a delivery again)",
            file=sys.stderr,
        )
        return 1
    if not await service.store.requeue_job(job.id, time.time()):
        print(f"klarna-capture: job {job.id} is running; it cannot be retried now", file=sys.stderr)
        return 1
    print(f"job {job.id} queued again")
    return 0
