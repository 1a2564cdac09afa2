"""compliance list: the privacy requests storefronts sent (data requests, redactions) and what
was done about each."""

import argparse
from typing import Any

from plugin.cli import arguments, running
from plugin.service import Service


def add_commands(commands: Any) -> None:
    compliance = arguments.command(
        commands, "compliance", "list privacy requests and their reports"
    )
    compliance_commands = arguments.commands(compliance, "compliance_command", "COMPLIANCE_COMMAND")
    compliance_list = arguments.command(
        compliance_commands,
        "list",
        "list recent privacy requests (data requests, redactions), oldest first",
    )
    compliance_list.add_argument(
        "--limit",
        type=arguments.limit,
        default=100,
        help=f"at most this many, 1 to {arguments.MAX_LIMIT}",
    )
    arguments.listing(compliance_list)
    compliance_list.set_defaults(run=lambda args: running.run(_compliance_list, args))


async def _compliance_list(service: Service, args: argparse.Namespace) -> int:
    rows = [
        {
            "received": running.iso(request.received_at),
            "platform": request.platform,
            "shop_domain": request.shop_domain,
            "topic": request.topic,
            "report": request.report,
        }
        for request in reversed(await service.store.compliance_requests(limit=args.limit))
    ]
    return running.print_list(
        args,
        "privacy requests",
        ("received", "platform", "shop_domain", "topic", "report"),
        rows,
    )
