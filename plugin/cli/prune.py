"""prune: what the retention windows let go, removed now (or counted, with --dry-run)."""

import argparse
import sys
from typing import Any

from plugin import retention
from plugin.cli import arguments, running
from plugin.service import Service


def add_commands(commands: Any) -> None:
    prune = arguments.command(
        commands,
        "prune",
        "remove what the KLARNA_CAPTURE_RETAIN_* windows let go now; prints rows per table",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would go, and change nothing"
    )
    prune.set_defaults(run=lambda args: running.run(_prune, args))


async def _prune(service: Service, args: argparse.Namespace) -> int:
    report = await retention.prune(
        service.store, retention.Retention.of(service.settings), dry_run=args.dry_run
    )
    if report is None:
        print("klarna-capture: another process is pruning now; try again later", file=sys.stderr)
        return 1
    for table, count in report.rows.items():
        what = "bodies" if table == "deliveries.body" else "rows"
        done = "would be emptied" if args.dry_run else "emptied"
        if table != "deliveries.body":
            done = "would be deleted" if args.dry_run else "deleted"
        print(f"{table:<20} {count:>9} {what} {done}")
    if service.settings.retention.ledger_days is None:
        print(
            "captures, operations, orders, order_operations, audit, compliance_requests:"
            " kept (RETAIN_LEDGER_DAYS=never)"
        )
    return 0
