"""A local Postgres for the platform's databases (``KEEL_DATABASE=postgres``), as the chart runs them:
MLflow's backend store, Feast's SQL registry and the audit records, each a database of one server.
SQLite stays the zero-setup default.

The server listens on a Unix socket only (no TCP port at all), in a 0700 directory of the user who runs
the stack, and trusts local connections: the directory's permissions, not a password, decide who gets in,
so there is no secret to store or pass around. Postgres refuses to run as root: as root the server runs as
Debian's ``postgres`` user, and since it cannot enter the owner-only KEEL_HOME, its data directory then
lives beside the system's own clusters (``/var/lib/postgresql/keel-<hash of KEEL_HOME>``).
The socket directory is short and under the system temp dir (a socket path must stay under ~100 bytes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from keel.errors import KeelError

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.stack.services import Service

NAME = "postgres"
DATABASES = ("mlflow", "feast", "audit")
READY = b"database system is ready to accept connections"
SYSTEM_USER = "postgres"


def _tag(s: Settings) -> str:
    return hashlib.sha256(str(s.home.resolve()).encode()).hexdigest()[:10]


def socket_dir(s: Settings) -> Path:
    return Path(tempfile.gettempdir()) / f"keel-pg-{_tag(s)}"


def data_dir(s: Settings) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/postgresql") / f"keel-{_tag(s)}"
    return s.home / "postgres"


def uri(s: Settings, database: str) -> str:
    """SQLAlchemy URI of one of the local server's databases, over its socket."""
    return f"postgresql+psycopg://keel@/{database}?host={socket_dir(s)}&port={s.postgres_port}"


def bin_dir() -> Path:
    """Debian's versioned server directory (the newest), else wherever initdb is on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if not found:
        raise KeelError("KEEL_DATABASE=postgres: the Postgres server is not installed; run `make setup` "
                        "(apt package postgresql)")
    return Path(found).parent


def as_owner(cmd: list[str]) -> list[str]:
    """As root, the command as the ``postgres`` system user, exec'd in place (no process in between, so
    the supervisor's signals reach the server itself)."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--", *cmd]


def _own(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    if os.geteuid() == 0:
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)


def prepare(s: Settings) -> None:
    """A fresh data directory gets initdb and the platform's databases (in single-user mode: no server
    needs to be running for it); an existing one is started as it is."""
    data, bindir = data_dir(s), bin_dir()
    _own(socket_dir(s))
    if (data / "PG_VERSION").exists():
        return
    _own(data)
    run = {"check": True, "capture_output": True, "timeout": 180}
    try:
        subprocess.run(as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "keel", "-E", "UTF8",
                                  "--auth-local=trust", "--auth-host=reject"]), **run)
        for db in DATABASES:
            subprocess.run(as_owner([str(bindir / "postgres"), "--single", "-D", str(data), "template1"]),
                           input=f"CREATE DATABASE {db};\n".encode(), **run)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(data, ignore_errors=True)  # half a cluster would never be initialised again
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise KeelError(f"postgres: cannot initialise {data}: {' '.join(tail) or exc}") from None


def service(s: Settings) -> Service:
    from keel.stack.services import Service

    cmd = as_owner([str(bin_dir() / "postgres"), "-D", str(data_dir(s)), "-p", str(s.postgres_port),
                     "-c", "listen_addresses=", "-c", f"unix_socket_directories={socket_dir(s)}"])
    # SIGINT is Postgres's fast shutdown; SIGTERM would wait for every client to disconnect first
    return Service(NAME, s.postgres_port, f"postgresql://{socket_dir(s)}:{s.postgres_port}", cmd, "postgres",
                   prepare=lambda: prepare(s), stop_signal=signal.SIGINT)


def healthy(s: Settings) -> bool:
    return (socket_dir(s) / f".s.PGSQL.{s.postgres_port}").exists()


def remove(s: Settings) -> None:
    """Delete the local cluster's data (tests; a stack being thrown away). The server must be stopped."""
    shutil.rmtree(data_dir(s), ignore_errors=True)
    shutil.rmtree(socket_dir(s), ignore_errors=True)
