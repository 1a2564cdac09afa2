"""The `klarna-capture` command: `main` and the parser it reads the command line with, put
together from one module per command group (processes: serve, worker, migrate; shops; jobs;
deliveries; compliance; prune; sandbox). The groups share `arguments` (how a parser is made)
and `running` (how a command runs and prints)."""

import argparse
import sys
from collections.abc import Sequence

from plugin import about, server
from plugin.config import PREFIX, ConfigError
from plugin.store import StoreUnavailable

DESCRIPTION = (
    "The `klarna-capture` command: serve, worker, migrate, shops, jobs, deliveries, prune, "
    "sandboxes."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"klarna-capture: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"klarna-capture: {exc} ({PREFIX}DATABASE_URL)", file=sys.stderr)
        return 1
    except server.CannotListen as exc:
        print(f"klarna-capture: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    # The groups are imported here, not at the top, so that `plugin.cli.<group>` modules can
    # import this package's helpers without a cycle.
    from plugin.cli import (
        arguments,
        compliance,
        deliveries,
        jobs,
        processes,
        prune,
        sandbox,
        shops,
    )

    parser = argparse.ArgumentParser(
        prog="klarna-capture", description=DESCRIPTION, formatter_class=arguments.Help
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {about.VERSION}")
    commands = arguments.commands(parser, "command", "COMMAND")
    # In the order `klarna-capture --help` lists them.
    for group in (processes, shops, jobs, deliveries, compliance, prune, sandbox):
        group.add_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
