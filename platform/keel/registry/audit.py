"""An append-only audit log of every alias change (and every refusal to change one).

Two stores behind one interface (``append``, ``records``):
- ``AuditLog``, local: one JSON object per line; appends take an exclusive lock and are fsync'ed, so
  concurrent writers (CLI, controller, DAG tasks) never interleave and a crash loses at most the record
  being written.
- ``AuditDB``, on a cluster: a table in the platform database (the chart's Postgres), because the
  controller, the DAG pods and every CLI write to it from different pods that share no disk. Each append
  is one committed INSERT; the order is the database's sequence, which concurrent writers cannot tear.

Both also give ``lock(model)``: the one serialization point for a model's alias changes. MLflow has no
compare-and-set on aliases, so two promotions or a promotion and a rollback released together would each
read the same champion and both write; whoever holds the audit store's lock reads, changes and records
alone (a file lock next to the log; a Postgres advisory lock, or a row lock elsewhere).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.errors import KeelError


@dataclass(frozen=True)
class AuditRecord:
    action: str                   # register | promote | force-promote | promote-refused | rollback
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str = ""
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    details: dict[str, object] = field(default_factory=dict)


LOCK_TIMEOUT_S = 120.0


def _busy(model: str, waited: float) -> KeelError:
    return KeelError(f"another alias change of model '{model}' has held its lock for {waited:.0f}s; "
                     "try again when it has finished")


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def lock(self, model: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold model's alias-change lock (released by the kernel if the holder dies)."""
        locks = self.path.parent / "locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(locks / f"{hashlib.sha256(model.encode()).hexdigest()[:24]}.lock", os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            start = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - start > timeout:
                        raise _busy(model, time.monotonic() - start) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, record: AuditRecord) -> AuditRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(record), sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return record

    def records(self, model: str | None = None) -> list[AuditRecord]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = AuditRecord(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash is skipped, not fatal
                if model is None or rec.model == model:
                    out.append(rec)
        return out


# pg_advisory_xact_lock key of the audit table's creation (alias locks hash model names into their own keys)
DDL_LOCK_KEY = 0x6B65656C00  # "keel\0"


class AuditDB:
    """Audit records in a SQL database (SQLAlchemy URI): table ``keel_audit``, created on first use."""

    def __init__(self, uri: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        try:
            self.engine = sa.create_engine(uri, pool_pre_ping=True)
        except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
            raise KeelError(f"KEEL_AUDIT_DB: not a usable database URI ({exc.__class__.__name__}: {exc}); "
                            "expected e.g. postgresql+psycopg://user:pass@host:5432/keel") from None
        meta = sa.MetaData()
        self.table = sa.Table(
            "keel_audit", meta,
            sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("time", sa.String(40), nullable=False),
            sa.Column("action", sa.String(64), nullable=False),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("record", sa.Text(), nullable=False),
        )
        self._meta, self._created = meta, False

    def _ready(self) -> None:
        """Create the table on first use (not at construction: a serving pod that never audits must not
        depend on the database). Pods of a release start together: on Postgres the check-then-create runs
        under a transaction-scoped advisory lock, so two first writers cannot both create the table (the
        loser's CREATE would violate the catalog's unique type name)."""
        if self._created:
            return
        with self._errors():
            if self.engine.dialect.name == "postgresql":
                with self.engine.begin() as conn:
                    conn.execute(self._sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK_KEY})
                    self._meta.create_all(conn, checkfirst=True)
            else:
                self._meta.create_all(self.engine, checkfirst=True)
        self._created = True

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A database that is down or missing is one readable line naming it (password hidden)."""
        try:
            yield
        except self._sa.exc.OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise KeelError(f"audit database {where} is not reachable or does not exist "
                            f"({str(exc.orig).strip().splitlines()[0]}); create it, or unset KEEL_AUDIT_DB "
                            "to keep the audit log in KEEL_HOME") from None

    @contextlib.contextmanager
    def lock(self, model: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold model's alias-change lock: ``pg_advisory_xact_lock`` on Postgres, for one transaction of its
        own (released when it ends or its connection dies; appends meanwhile go through other connections
        unhindered); on SQLite, whose writers would queue behind that transaction, a file lock beside the
        database file."""
        sa = self._sa
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            database = self.engine.url.database
            if not database or database == ":memory:":
                raise KeelError("KEEL_AUDIT_DB: an in-memory SQLite database cannot serialize alias changes")
            with AuditLog(Path(database)).lock(model, timeout):
                yield
            return
        if dialect != "postgresql":
            raise KeelError(f"KEEL_AUDIT_DB: alias changes are serialized on PostgreSQL or SQLite, not {dialect}")
        key = int.from_bytes(hashlib.sha256(model.encode()).digest()[:8], "big", signed=True)
        start = time.monotonic()
        with self._errors(), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": f"{int(timeout * 1000)}ms"})
            try:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            except sa.exc.OperationalError as exc:
                if "lock timeout" not in str(exc):
                    raise
                raise _busy(model, time.monotonic() - start) from None
            try:
                yield
            finally:
                conn.rollback()  # ends the transaction, and the lock with it

    def append(self, record: AuditRecord) -> AuditRecord:
        row = {"time": record.time, "action": record.action, "model": record.model,
               "record": json.dumps(asdict(record), sort_keys=True, default=str)}
        self._ready()
        with self._errors(), self.engine.begin() as conn:
            conn.execute(self.table.insert().values(**row))
        return record

    def records(self, model: str | None = None) -> list[AuditRecord]:
        q = self._sa.select(self.table.c.record).order_by(self.table.c.seq)
        if model is not None:
            q = q.where(self.table.c.model == model)
        self._ready()
        with self._errors(), self.engine.connect() as conn:
            return [AuditRecord(**json.loads(r)) for (r,) in conn.execute(q)]


def open_audit(settings: Any) -> AuditLog | AuditDB:
    """The audit store the settings name: KEEL_AUDIT_DB when set, else KEEL_HOME/audit.jsonl."""
    if settings.audit_db_uri is not None:
        return AuditDB(settings.audit_db_uri)
    return AuditLog(settings.audit_log)


AuditStore = AuditLog | AuditDB
