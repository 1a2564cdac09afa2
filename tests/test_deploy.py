"""deploy/ names only what the service really has. Images cannot be built here, so the Dockerfile,
the compose file, the systemd units and the nginx template are read as their tools read them, and
every command they run is parsed by the CLI's own parser, every KLARNA_CAPTURE_* variable is one
the settings read (and its value one they accept), and every port is the one the other side
listens on. systemd-analyze checks the units as systemd would load them.
(tests/test_reverse_proxy.py runs the nginx template for real.)"""

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from plugin import server
from plugin.app import create_app
from plugin.cli import build_parser
from plugin.config import PREFIX, Settings, load_settings
from plugin.webhooks import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "nginx" / "klarna-capture.conf.template"
UNITS = {
    "klarna-capture-serve@.service": "8000",
    "klarna-capture-worker@.service": "9471",
}


class _Reads(dict[str, str]):
    """An environment that notes every name asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return super().get(key, default)


def known_variables() -> set[str]:
    """Every KLARNA_CAPTURE_* variable the settings read."""
    reads = _Reads()
    load_settings(reads)
    assert reads.names, "load_settings read no variable"
    return reads.names


def checked_settings(environment: Mapping[str, str], where: str) -> Settings:
    """The settings a process with `environment` starts with: each of its KLARNA_CAPTURE_*
    variables one the service reads, and every value accepted."""
    ours = {name: value for name, value in environment.items() if name.startswith(PREFIX)}
    unknown = sorted(set(ours) - known_variables())
    assert not unknown, f"{where} sets variables the service does not read: {unknown}"
    return load_settings(ours)


def cli(argv: list[str], where: str) -> Any:
    """`klarna-capture ARGV` as the CLI parses it; a command or option it lacks fails here."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: klarna-capture does not take {shlex.join(argv)}")


# The Dockerfile.


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(v, str) for v in value), arguments
    return value


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def image_environment() -> dict[str, str]:
    environment: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                environment[key] = value
    return environment


def entrypoint() -> list[str]:
    [arguments] = [a for name, a in final_stage() if name == "ENTRYPOINT"]
    return exec_form(arguments)


def test_the_image_is_slim_python_and_runs_as_a_user_of_its_own() -> None:
    instructions = dockerfile()
    bases = [arguments.split()[0] for name, arguments in instructions if name == "FROM"]
    assert bases
    assert all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base) for base in bases)
    names = [name for name, _ in final_stage()]
    users = [arguments for name, arguments in final_stage() if name == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert names.index("USER") < names.index("ENTRYPOINT")
    # What it copies from the checkout is there, and the build context keeps it.
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for name, arguments in instructions:
        if name == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignored]


def test_the_image_runs_serve_on_the_port_it_exposes_and_checks_readyz_there() -> None:
    assert entrypoint() == ["klarna-capture"]
    [command] = [exec_form(a) for name, a in final_stage() if name == "CMD"]
    args = cli(entrypoint()[1:] + command, "the Dockerfile's CMD")
    assert (args.command, args.host) == ("serve", "0.0.0.0")  # noqa: S104 (in a container)
    [exposed] = [a for name, a in final_stage() if name == "EXPOSE"]
    assert exposed == str(args.port)
    [healthcheck] = [a for name, a in final_stage() if name == "HEALTHCHECK"]
    probe = exec_form(healthcheck.partition(" CMD ")[2])
    assert f"'http://127.0.0.1:{args.port}/readyz'" in probe[-1]
    routes = create_app(load_settings({})).routes
    assert "/readyz" in [getattr(route, "path", None) for route in routes]
    settings = checked_settings(image_environment(), "the Dockerfile")
    assert str(settings.data_dir) == image_environment()["KLARNA_CAPTURE_DATA_DIR"]


# The compose file.


def example_environment(path: Path) -> dict[str, str]:
    """KEY=value lines (as docker compose's .env and systemd's EnvironmentFile read them)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def compose() -> dict[str, Any]:
    """deploy/compose.yaml with its ${...} filled in from env.example, as docker compose does
    from .env: a name the example lacks fails here."""
    values = example_environment(DEPLOY / "env.example")
    text = (DEPLOY / "compose.yaml").read_text()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"compose.yaml uses ${{{name}}}, which env.example does not set"
        return values[name]

    loaded: dict[str, Any] = yaml.safe_load(re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", fill, text))
    return loaded


def services(kind: str) -> dict[str, dict[str, Any]]:
    """The compose services that run `klarna-capture KIND`."""
    found = {}
    for name, service in compose()["services"].items():
        if "build" in service:
            args = cli(entrypoint()[1:] + service["command"], f"compose service {name}")
            if args.command == kind:
                found[name] = service
    return found


def test_compose_runs_two_serve_and_two_worker_from_the_image_on_one_postgresql() -> None:
    file = compose()
    serve, worker = services("serve"), services("worker")
    assert (len(serve), len(worker)) == (2, 2)
    postgres = file["services"]["postgres"]["environment"]
    for name, service in {**serve, **worker}.items():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).samefile(
            DEPLOY / "Dockerfile"
        )
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        settings = checked_settings(service["environment"], f"compose service {name}")
        database = urlsplit(settings.database.url)
        assert (database.hostname, database.port) == ("postgres", 5432)
        assert (database.username, database.password, database.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            "/" + postgres["POSTGRES_DB"],
        )
        assert settings.web.public_url.startswith("https://")
        assert settings.queue.worker_processes == len(worker)
        if name in serve:
            assert settings.queue.workers == 0
        else:
            assert settings.queue.workers > 0
            # Alive while its metrics answer: the port its settings serve them on.
            assert settings.metrics_address is not None
            probe = service["healthcheck"]["test"][-1]
            assert f"'http://127.0.0.1:{settings.metrics_address[1]}/metrics'" in probe


def placeholders() -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))


def test_compose_puts_the_nginx_template_in_front_of_both_serve_and_is_trusted_by_them() -> None:
    file = compose()
    proxy = file["services"]["proxy"]
    environment = proxy["environment"]
    # The image renders /etc/nginx/templates/*.template with the variables it is given.
    [template] = [v for v in proxy["volumes"] if v.split(":")[1].startswith("/etc/nginx/templates")]
    assert (DEPLOY / template.split(":")[0]).samefile(TEMPLATE)
    assert placeholders() == set(environment), "the template's ${...} and the proxy's variables"
    serve = services("serve")
    upstreams = {environment[name] for name in placeholders() if name.startswith("PROXY_SERVE_")}
    assert upstreams == {
        f"{name}:{cli(entrypoint()[1:] + s['command'], name).port}" for name, s in serve.items()
    }
    assert set(proxy["ports"]) == {
        "443:" + environment["PROXY_HTTPS_LISTEN"],
        "80:" + environment["PROXY_HTTP_LISTEN"],
    }
    public_url = environment["PROXY_PUBLIC_URL"]
    assert urlsplit(public_url).hostname == environment["PROXY_SERVER_NAME"]
    address = proxy["networks"]["default"]["ipv4_address"]
    for name, service in serve.items():
        settings = checked_settings(service["environment"], f"compose service {name}")
        assert settings.web.public_url == public_url
        assert [str(network) for network in settings.web.trusted_proxies] == [f"{address}/32"]


# The systemd units.


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of KEY=value settings, a key that repeats keeping every value."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("name", sorted(UNITS))
def test_each_systemd_unit_runs_a_real_command_with_known_settings_hardened(name: str) -> None:
    instance = UNITS[name]
    service = unit(DEPLOY / "systemd" / name)["Service"]
    [command] = service["ExecStart"]
    program, *argv = shlex.split(command.replace("%i", instance))
    assert program == "/opt/klarna-capture/bin/klarna-capture"
    args = cli(argv, name)
    assert args.command == name.removeprefix("klarna-capture-").partition("@")[0]
    environment = example_environment(DEPLOY / "systemd" / "env.example")
    own = dict(pair.split("=", 1) for pair in service.get("Environment", []))
    assert not set(own) & set(environment), "the unit's own variables are left to the unit"
    environment.update({key: value.replace("%i", instance) for key, value in own.items()})
    settings = checked_settings(environment, name)
    assert service["EnvironmentFile"] == ["/etc/klarna-capture/env"]
    assert settings.metrics_address is not None
    if args.command == "serve":
        assert (args.host, args.port, settings.queue.workers) == ("127.0.0.1", int(instance), 0)
        assert settings.metrics_address[1] != args.port
    else:
        assert settings.queue.workers > 0
        assert settings.metrics_address == ("127.0.0.1", int(instance))
    assert service["Restart"] == ["on-failure"]
    assert service["User"] != ["root"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "klarna-capture",
    }.items():
        assert service[key] == [value], key


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_loads_each_unit_without_a_warning(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/test installs Debian's systemd)"
    # The command installed here stands in for /opt/klarna-capture's: systemd checks it exists.
    installed = Path(sys.executable).parent / "klarna-capture"
    assert installed.exists()
    text = (DEPLOY / "systemd" / name).read_text()
    (tmp_path / name).write_text(
        text.replace("/opt/klarna-capture/bin/klarna-capture", str(installed))
    )
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / name.replace("@.", f"@{UNITS[name]}."))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


# The nginx template.


def directives() -> dict[str, list[str]]:
    """Every `name value...;` of the template, by name (each occurrence's value)."""
    found: dict[str, list[str]] = {}
    for line in TEMPLATE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, value = line[:-1].partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def test_the_proxy_limits_are_no_looser_than_the_service_s_own() -> None:
    found = directives()
    assert found["client_max_body_size"] == ["1m"]
    assert MAX_BODY_BYTES == 1024 * 1024
    [buffers] = found["large_client_header_buffers"]
    count, size = buffers.split()
    assert int(count) * int(size.removesuffix("k")) * 1024 == server.MAX_HEAD_BYTES
    assert found["client_header_timeout"] == [f"{server.HEAD_SECONDS:.0f}s"]
    assert found["client_body_timeout"] == [f"{server.BODY_SECONDS:.0f}s"]
    # The client side's idle time, and the upstream's below serve's (nginx must close first).
    server_side, upstream_side = sorted(found["keepalive_timeout"], reverse=True)
    assert server_side == f"{server.KEEP_ALIVE_SECONDS}s"
    assert int(upstream_side.removesuffix("s")) < server.KEEP_ALIVE_SECONDS
    # What serve believes from the proxy is what the proxy sets, never what the client sent.
    headers = dict(value.split(" ", 1) for value in found["proxy_set_header"])
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-For"] == "$remote_addr"
    # The access log leaves out queries: a sign-in link's token is never written to it.
    [log_format] = re.findall(r"^log_format [^;]*;", TEMPLATE.read_text(), re.MULTILINE)
    assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", log_format)
    assert found["access_log"]
    assert all(value.endswith(" klarna_capture") for value in found["access_log"])
