"""What every command group's parser is made of: subcommands whose --help says what they do
and shows their defaults, and the argument types and options they share."""

import argparse
from collections.abc import Callable
from typing import Any

MAX_LIMIT = 10_000  # rows a list command prints at most


class Help(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


def commands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar)


def command(commands: Any, name: str, what: str, **options: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help starts by saying what it does."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=what,
        description=what[0].upper() + what[1:] + ".",
        formatter_class=Help,
        **options,
    )
    return parser


def number(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        if text.isascii() and text.isdigit() and low <= int(text) <= high:
            return int(text)
        raise argparse.ArgumentTypeError(f"{what} must be a whole number from {low} to {high}")

    return parse


port = number(0, 65535, "a port")
limit = number(1, MAX_LIMIT, "the limit")


def listing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array of objects")
