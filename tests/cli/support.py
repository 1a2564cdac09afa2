"""What the CLI tests share: a shop added the way an operator adds one, and the ways `shop
add` is refused."""

import subprocess

import msgspec

from tests.helpers import cli_shop, run_cli


def add_shop(env: dict[str, str], *extra: str) -> dict[str, str]:
    return cli_shop(
        env, *extra, name="Corner shop", username="PK_CORNER", password="the-klarna-password"
    )


def listed_shops(env: dict[str, str]) -> list[str]:
    """The ids `shop list --json` prints."""
    return [
        shop["shop_id"]
        for shop in msgspec.json.decode(run_cli(env, "shop", "list", "--json").stdout)
    ]


def refused_shop_add(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`shop add` of a standard shop with `extra` arguments, expected to be refused."""
    return run_cli(
        env,
        "shop",
        "add",
        "--name",
        "Refused",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "live",
        "--klarna-username",
        "PK",
        "--klarna-password-stdin",
        *extra,
        stdin="pw\n",
        check=False,
    )


WOO_KEY = "ck_" + "a1" * 20


WOO_SECRET = "cs_" + "b2" * 20


def add_woocommerce_shop(
    env: dict[str, str], *extra: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        env,
        "shop",
        "add",
        "--platform",
        "woocommerce",
        "--name",
        "Tomato farm",
        "--klarna-region",
        "eu",
        "--klarna-environment",
        "playground",
        "--klarna-username",
        "PK_FARM",
        "--klarna-password-stdin",
        "--consumer-secret-stdin",
        *extra,
        stdin=f"the-klarna-password\n{WOO_SECRET}\n" if stdin is None else stdin,
        check=check,
    )
