"""The `klarna-capture` command."""

import argparse
import sys
from collections.abc import Sequence

import uvicorn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="klarna-capture", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sandbox = commands.add_parser("sandbox", help="run a simulator of a system we talk to")
    simulators = sandbox.add_subparsers(dest="simulator", required=True)
    klarna = simulators.add_parser("klarna", help="Klarna's Order management API, in memory")
    klarna.add_argument("--host", default="127.0.0.1")
    klarna.add_argument("--port", type=int, default=8100)
    klarna.add_argument("--username", help="the API username it accepts")
    klarna.add_argument("--password", help="the API password it accepts")

    args = parser.parse_args(argv)
    if args.command == "sandbox" and args.simulator == "klarna":
        return _sandbox_klarna(args)
    parser.error("unknown command")
    return 2


def _sandbox_klarna(args: argparse.Namespace) -> int:
    from plugin.sandbox import klarna

    if (args.username is None) != (args.password is None):
        print("klarna-capture: give --username and --password together", file=sys.stderr)
        return 2
    username = args.username or klarna.DEFAULT_USERNAME
    password = args.password or klarna.DEFAULT_PASSWORD
    app = klarna.create_app(credentials={username: password})
    print(
        f"Klarna sandbox on http://{args.host}:{args.port} (API username {username!r}); "
        f"set KLARNA_CAPTURE_KLARNA_URL to that URL",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
