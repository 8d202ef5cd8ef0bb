"""Durable retraining triggers (SQLite under KEEL_HOME), so an Airflow outage or a controller restart
loses none.

A trigger is ``pending`` until Airflow accepted its DAG run, then ``running`` until that run ends
(``done`` or ``failed``). Deduplication is per model: while a model has a pending or running trigger, or
its last one was created less than the cool-down ago, a new alert for it is recorded as a duplicate and
starts nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL,
    fingerprint TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt REAL NOT NULL, dag_run_id TEXT, error TEXT, updated REAL NOT NULL, outcome TEXT,
    refusals INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS triggers_model ON triggers (model, created);
"""
OPEN_STATES = ("pending", "running")


@dataclass(frozen=True)
class Trigger:
    id: str
    model: str
    reason: str
    source: str
    fingerprint: str
    created: float
    state: str
    attempts: int
    next_attempt: float
    dag_run_id: str | None
    error: str | None
    outcome: str | None = None
    refusals: int = 0  # how many times Airflow refused it for good (4xx), as opposed to being down

    @property
    def run_id(self) -> str:
        """The DAG run id: deterministic, so a retried submission is the same run, never a second one."""
        return self.dag_run_id or f"keel__{self.model}__{self.id}"


class TriggerQueue:
    def __init__(self, path: Path, cooldown_s: float = 600.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(triggers)")}
        if "refusals" not in columns:  # a queue written before refusals were counted
            self._db.execute("ALTER TABLE triggers ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0")

    def _rows(self, sql: str, *args: object) -> list[Trigger]:
        with self._lock:  # one connection for the HTTP threads and the worker: one statement at a time
            return self._rows_locked(sql, *args)

    def _rows_locked(self, sql: str, *args: object) -> list[Trigger]:
        cur = self._db.execute(f"SELECT id, model, reason, source, fingerprint, created, state, attempts, "
                               f"next_attempt, dag_run_id, error, outcome, refusals FROM triggers {sql}", args)
        return [Trigger(*r) for r in cur.fetchall()]

    def offer(self, model: str, reason: str, source: str, fingerprint: str,
              now: float | None = None) -> tuple[Trigger, bool]:
        """Queue a retrain of ``model`` unless one is open or was created within the cool-down; returns
        the trigger that stands for this request and whether it is new."""
        now = time.time() if now is None else now
        with self._lock:
            latest = self._rows_locked("WHERE model = ? ORDER BY created DESC LIMIT 1", model)
            if latest and (latest[0].state in OPEN_STATES or now - latest[0].created < self.cooldown_s):
                return latest[0], False
            t = Trigger(uuid.uuid4().hex[:12], model, reason, source, fingerprint, now, "pending", 0, now, None, None)
            self._db.execute("INSERT INTO triggers (id, model, reason, source, fingerprint, created, state, "
                             "attempts, next_attempt, dag_run_id, error, updated, outcome, refusals) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                             (t.id, t.model, t.reason, t.source, t.fingerprint, t.created, t.state, t.attempts,
                              t.next_attempt, t.dag_run_id, t.error, now, None))
            return t, True

    def due(self, now: float | None = None) -> list[Trigger]:
        now = time.time() if now is None else now
        return self._rows("WHERE state = 'pending' AND next_attempt <= ? ORDER BY created", now)

    def running(self) -> list[Trigger]:
        return self._rows("WHERE state = 'running' ORDER BY created")

    def all(self, model: str | None = None) -> list[Trigger]:
        if model:
            return self._rows("WHERE model = ? ORDER BY created", model)
        return self._rows("ORDER BY created")

    def pending_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM triggers WHERE state = 'pending'").fetchone()[0])

    def submitted(self, t: Trigger) -> None:
        self._set(t.id, state="running", dag_run_id=t.run_id, error=None)

    def retry_later(self, t: Trigger, error: str, now: float | None = None, refused: bool = False) -> float:
        """Back off exponentially (2 s doubling, at most 60 s) and keep the trigger pending; ``refused``
        counts a permanent refusal (see :meth:`give_up`)."""
        now = time.time() if now is None else now
        delay = min(60.0, 2.0 ** (t.attempts + 1))
        self._set(t.id, attempts=t.attempts + 1, next_attempt=now + delay, error=error[:500],
                  refusals=t.refusals + int(refused))
        return delay

    def give_up(self, t: Trigger, error: str) -> None:
        """Close a trigger Airflow keeps refusing for good (e.g. a model with no retraining DAG: retried a
        few times first, since a model just added to the spec has its DAG once Airflow re-parses the file)."""
        self._set(t.id, state="failed", outcome="rejected", attempts=t.attempts + 1, refusals=t.refusals + 1,
                  error=error[:500])

    def finished(self, t: Trigger, state: str, outcome: str, error: str | None = None) -> None:
        self._set(t.id, state=state, outcome=outcome, error=error)

    def _set(self, trigger_id: str, **cols: object) -> None:
        cols["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in cols)
        with self._lock:
            self._db.execute(f"UPDATE triggers SET {assignments} WHERE id = ?", (*cols.values(), trigger_id))

    def close(self) -> None:
        self._db.close()
