"""A throwaway PostgreSQL cluster for the tests and the benchmarks: initdb into a temporary folder,
started on a free loopback port with trust authentication, stopped (and its folder removed) at the
end. The tests run it with fsync off; the benchmarks (scripts/support.py) with PostgreSQL's
default durability, since they measure what production pays.

The tests use one through the `postgres_url` fixture; `scripts/test` starts one for the whole run
with `python -m tests.postgres_cluster start DIR` (prints the URL) and `... stop DIR`. A test that
takes the server away and back (`shut_down`, `start_again`: same port, same data) runs a
`throwaway()` cluster of its own, never the shared one. PostgreSQL
refuses to run as root, so as root the cluster runs as the `postgres` user (or `nobody`).
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

USER = "postgres"  # the cluster's superuser, and the OS user it runs as under root


class PostgresNotInstalled(RuntimeError):
    pass


def find_program(name: str) -> Path:
    """A PostgreSQL server program from PATH or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1])
    raise PostgresNotInstalled(
        f"PostgreSQL is not installed: no {name} on PATH or in /usr/lib/postgresql/*/bin."
        " Install it (apt-get install postgresql) or set KLARNA_CAPTURE_TEST_POSTGRES_URL to a"
        " server where this user may CREATE DATABASE."
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as, when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and there is neither a postgres nor a nobody user")


def _run(command: list[str], folder: Path, log: Path) -> None:
    account = _run_as()
    with log.open("ab") as output:
        done = subprocess.run(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=120,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            start_new_session=True,  # Ctrl-C reaches us, not the server: the caller stops it
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}):\n{tail}")


def start(folder: Path, *, durable: bool = False) -> str:
    """initdb into `folder` and start the server; returns its URL (superuser, no password).
    `durable`: PostgreSQL's default fsync and commit settings, else both off."""
    account = _run_as()
    initdb = find_program("initdb")
    data, sockets, log = folder / "data", folder / "socket", folder / "setup.log"
    sockets.mkdir(parents=True, exist_ok=True)
    if account:
        for path in (folder, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(folder, 0o700)
    setup = ["-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
    _run([str(initdb), "-D", str(data), *setup], folder, log)
    # Durability is not under test in the tests: a crash loses the cluster anyway.
    fast = "" if durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    for attempt in range(3):
        port = _free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        options += fast
        try:
            _start_server(folder, options)
        except RuntimeError:
            if attempt == 2:
                raise
            continue  # the port was taken meanwhile
        (folder / "port").write_text(str(port))
        (folder / "options").write_text(options)
        return f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    raise AssertionError("unreachable")


def _start_server(folder: Path, options: str) -> None:
    waiting = ["-l", str(folder / "server.log"), "-w", "-t", "60"]
    command = [str(find_program("pg_ctl")), "-D", str(folder / "data"), *waiting, "-o", options]
    _run([*command, "start"], folder, folder / "setup.log")


def shut_down(folder: Path) -> None:
    """Stop the server as an operator's restart does (`pg_ctl stop -m fast`: every session is
    ended, the server's connections closed), keeping its data for `start_again`."""
    data = folder / "data"
    command = [str(find_program("pg_ctl")), "-D", str(data), "-m", "fast", "-w", "stop"]
    _run(command, folder, folder / "setup.log")


def freeze(folder: Path) -> None:
    """Stop every process of the server (SIGSTOP) without closing anything: its connections stay
    open and answer nothing, as a server cut off by the network does. `thaw` resumes it."""
    _signal_server(folder, signal.SIGSTOP)


def thaw(folder: Path) -> None:
    _signal_server(folder, signal.SIGCONT)


def _signal_server(folder: Path, signum: signal.Signals) -> None:
    """Signal the server's postmaster and its children (each backend is in a group of its own,
    so a group signal would not reach them), and no other process."""
    postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # After the command's closing parenthesis: state, then the parent's pid.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
    for pid in [postmaster, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def start_again(folder: Path) -> None:
    """Start the server `shut_down` stopped, on the same port with the same data and settings."""
    _start_server(folder, (folder / "options").read_text())


@contextlib.contextmanager
def throwaway(*, durable: bool = False) -> Iterator[tuple[Path, str]]:
    """A cluster of the caller's own for the block: (its folder, its superuser URL)."""
    find_program("initdb")  # PostgresNotInstalled, saying what to do, before any folder is made
    folder = Path(tempfile.mkdtemp(prefix="klarna-capture-pg-"))
    try:
        yield folder, start(folder, durable=durable)
    finally:
        stop(folder)


def stop(folder: Path) -> None:
    """Stop the server started in `folder` (if it runs) and remove the folder."""
    data = folder / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(RuntimeError, PostgresNotInstalled):
            _run(
                [str(find_program("pg_ctl")), "-D", str(data), "-m", "immediate", "-w", "stop"],
                folder,
                folder / "setup.log",
            )
    shutil.rmtree(folder, ignore_errors=True)


def database_url(server_url: str, database: str) -> str:
    """`server_url` with its database replaced."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """An empty database of its own on the server, dropped afterwards; yields its URL."""
    name = f"klarna_capture_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    try:
        yield database_url(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["start", folder]:
            print(start(Path(folder)))
        case ["stop", folder]:
            stop(Path(folder))
        case _:
            sys.exit("usage: python -m tests.postgres_cluster start|stop DIR")
