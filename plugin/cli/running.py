"""How a command runs and says what it found: the settings as every command reads them, a
command run against the service, and the output and input helpers the command groups share."""

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from plugin.config import (
    Settings,
    ensure_secret_keys,
    load_settings,
    secure_data_dir,
    unknown_variables,
    with_serve_url,
)
from plugin.logs import configure_logging
from plugin.service import Service, open_service
from plugin.store.records import Shop


def settings() -> Settings:
    for warning in unknown_variables():
        print(warning, file=sys.stderr)
    loaded, created = ensure_secret_keys(load_settings())
    for line in (created, *secure_data_dir(loaded)):
        if line:
            print(line, file=sys.stderr)
    return with_serve_url(loaded)


def run(command: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run `command` with an open service (and `args`); its exit status."""
    current = settings()
    configure_logging(current.log_level)

    async def main() -> int:
        async with open_service(current) as service:
            return await command(service, *args)

    return asyncio.run(main())


def print_list(
    args: argparse.Namespace, what: str, header: Sequence[str], rows: Sequence[dict[str, Any]]
) -> int:
    """A list command's output: a JSON array with --json; else a header row and one line a
    row, columns aligned (the last one left as it is); nothing on stdout when empty."""
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    if not rows:
        print(f"no {what}", file=sys.stderr)
        return 0
    cells = [[name.upper() for name in header]] + [
        ["" if row[name] is None else str(row[name]) for name in header] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    for line in cells:
        print("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]))
    return 0


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


async def find_shop(service: Service, shop_id: str) -> Shop | None:
    shop = await service.store.get_shop(shop_id)
    if shop is None:
        print(f"klarna-capture: no shop {shop_id}", file=sys.stderr)
    return shop


def secret_from(flag: bool, prompt: str, what: str, option: str) -> str | None:
    """A secret from standard input (one line) or a prompt; None, said why, when neither."""
    if flag:
        return sys.stdin.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    print(f"klarna-capture: give the {what} on standard input with {option}", file=sys.stderr)
    return None
