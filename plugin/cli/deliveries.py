"""deliveries replay: a stored webhook delivery processed again."""

import argparse
import sys
import time
from typing import Any

from plugin.cli import arguments, running
from plugin.service import Service


def add_commands(commands: Any) -> None:
    deliveries = arguments.command(commands, "deliveries", "replay a stored delivery")
    delivery_commands = arguments.commands(deliveries, "deliveries_command", "DELIVERIES_COMMAND")
    replay = arguments.command(delivery_commands, "replay", "process a stored delivery again")
    replay.add_argument("delivery_id", type=int, help="the delivery's id")
    replay.set_defaults(run=lambda args: running.run(_deliveries_replay, args))


async def _deliveries_replay(service: Service, args: argparse.Namespace) -> int:
    delivery = await service.store.get_delivery(args.delivery_id)
    if delivery is None:
        print(f"klarna-capture: no delivery {args.delivery_id}", file=sys.stderr)
        return 1
    if delivery.status != "accepted" or delivery.fulfillment_id is None:
        print(
            f"klarna-capture: delivery {delivery.id} was rejected ({delivery.reason}); "
            "there is nothing to replay",
            file=sys.stderr,
        )
        return 1
    if delivery.pruned_at is not None:
        print(
            f"klarna-capture: delivery {delivery.id}'s body was removed on "
            f"{running.iso(delivery.pruned_at)} (retention: its shipment was settled); "
            "there is nothing to replay",
            file=sys.stderr,
        )
        return 1
    job_id = await service.store.queue_fulfillment(
        delivery.shop_id, delivery.fulfillment_id, time.time()
    )
    print(f"delivery {delivery.id} replayed: job {job_id} queued")
    return 0
