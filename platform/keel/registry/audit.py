"""An append-only audit log of every alias change (and every refusal to change one).

One JSON object per line; appends take an exclusive lock and are fsync'ed, so concurrent writers
(CLI, controller, DAG tasks) never interleave and a crash loses at most the record being written.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path


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


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: AuditRecord) -> AuditRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(record), sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
