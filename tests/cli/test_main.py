"""The `klarna-capture` command as a whole: its version, every command's help, its warnings about
the environment, its argument checks, and the platforms' options it takes from the registry."""

import argparse
import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin import about, cli
from tests.helpers import run_cli


def test_the_version_is_the_one_in_pyproject_also_from_a_checkout_never_installed() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())[
        "project"
    ]
    done = subprocess.run(
        [sys.executable, "-m", "plugin", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"klarna-capture {project['version']}\n"
    # What a checkout reads when the package is not installed: pyproject.toml itself.
    documentation = project.get("urls", {}).get("Documentation")
    assert about._from_pyproject() == (project["version"], documentation)
    assert about._from_pyproject() == (about.VERSION, about.DOCS_URL)


def test_unknown_variables_are_warned_about_with_the_closest_name(env: dict[str, str]) -> None:
    done = run_cli({**env, "KLARNA_CAPTURE_WORKER": "8", "KLARNA_CAPTURE_ZZZ": "1"}, "shop", "list")
    assert done.stderr.splitlines()[:2] == [
        "klarna-capture: 'KLARNA_CAPTURE_WORKER' is not a setting and is ignored; did you mean "
        "KLARNA_CAPTURE_WORKERS?",
        "klarna-capture: 'KLARNA_CAPTURE_ZZZ' is not a setting and is ignored",
    ]
    # Known names, KLARNA_CAPTURE_TEST_POSTGRES_URL among them, are not.
    quiet = run_cli({**env, "KLARNA_CAPTURE_TEST_POSTGRES_URL": "postgresql://x"}, "shop", "list")
    assert "is not a setting" not in quiet.stderr


def every_command(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Each command of the CLI, with its words, down to the leaves."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_command(sub, (*path, name))


def test_every_command_says_what_it_does_and_shows_its_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = list(every_command(cli.build_parser()))
    assert len(commands) > 20
    for words, parser in commands:
        with pytest.raises(SystemExit) as exited:
            cli.main([*words, "--help"])
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert parser.description, words
        assert " ".join(parser.description.split()) in text, words
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"(default: {action.default})" in text, (words, action.dest)
    serve_help = " ".join(run_cli(os.environ.copy(), "serve", "--help").stdout.split())
    assert "--port PORT the port to listen on (0: any free one) (default: 8000)" in serve_help
    add_help = " ".join(run_cli(os.environ.copy(), "shop", "add", "--help").stdout.split())
    assert "required unless run at a terminal" in add_help


def refused_arguments(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The last line `klarna-capture ARGS` prints, refusing its arguments before doing anything."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    "command", [("jobs", "list", "--limit"), ("compliance", "list", "--limit")]
)
@pytest.mark.parametrize("limit", ["-1", "0", "10001", "many"])
def test_a_limit_must_be_a_positive_whole_number(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...], limit: str
) -> None:
    assert refused_arguments(capsys, *command, limit).endswith(
        "the limit must be a whole number from 1 to 10000"
    )


def test_the_cli_asks_the_registry_and_imports_no_platform_package() -> None:
    allowed = {"plugin.platforms", "plugin.platforms.registry", "plugin.platforms.base"}
    package = Path(cli.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                imported |= {name for name in names if name.startswith("plugin.platforms")}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("plugin.platforms")}
    assert imported, "the shop commands ask the registry"
    within = tuple(f"{name}." for name in allowed - {"plugin.platforms"})
    assert {
        name for name in imported if name not in allowed and not name.startswith(within)
    } == set()
