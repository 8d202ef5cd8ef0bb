"""A real Postgres for the tests of what a cluster keeps in the platform database (the chart runs
Postgres): Debian's server binaries, one instance per session on a free loopback port, in a directory of
its own, stopped by the fixture even when a test fails. Started only by the tests that ask for it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from keel.errors import KeelError
from keel.stack import postgres as keel_pg
from tests.conftest import free_ports


def _bin_dir() -> Path | None:
    """The server binaries keel's own local Postgres uses (keel.stack.postgres); None when not installed."""
    try:
        return keel_pg.bin_dir()
    except KeelError:
        return None


_as_owner = keel_pg.as_owner  # as root, as the 'postgres' system user (Postgres refuses root)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """SQLAlchemy URI of the database 'keel' on a fresh local Postgres (password auth over TCP)."""
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("no Postgres server binaries (apt install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="keel-pg-"))
    data, pwfile, password = root / "data", root / "pw", secrets.token_urlsafe(16)
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_ports(1)[0]
    log = root / "postgres.log"
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "keel", f"--pwfile={pwfile}",
                                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"]),
                       check=True, capture_output=True, timeout=120)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                                  "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        deadline = time.monotonic() + 30
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        subprocess.run(_as_owner([str(bindir / "createdb"), "-h", str(root), "-p", str(port), "-U", "keel",
                                  "keel"]), check=True, capture_output=True, timeout=30)
        yield f"postgresql+psycopg://keel:{password}@127.0.0.1:{port}/keel"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def database(uri: str, name: str) -> str:
    """A fresh database ``name`` on the server of ``uri``; its URI."""
    parts = urlsplit(uri)
    with psycopg.connect(urlunsplit(parts._replace(scheme="postgresql")), autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def rows(uri: str, sql: str) -> list[tuple]:
    with psycopg.connect(urlunsplit(urlsplit(uri)._replace(scheme="postgresql"))) as con:
        return con.execute(sql).fetchall()
