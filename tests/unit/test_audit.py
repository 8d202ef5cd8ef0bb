from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from keel.registry.audit import AuditLog, AuditRecord


def _writer(path: str, worker: int, n: int) -> None:
    log = AuditLog(Path(path))
    for i in range(n):
        log.append(AuditRecord("promote", f"m{worker}", "champion", str(i), str(i + 1), "t", reason="x" * 2000))


def test_append_and_filter(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a" / "audit.jsonl")
    assert log.records() == []
    log.append(AuditRecord("register", "fraud", "challenger", None, "1", "alice"))
    log.append(AuditRecord("promote", "other", "champion", None, "3", "bob", reason="why"))
    assert [r.model for r in log.records()] == ["fraud", "other"]
    (rec,) = log.records("other")
    assert (rec.action, rec.from_version, rec.to_version, rec.actor, rec.reason) == ("promote", None, "3", "bob", "why")
    assert rec.time.endswith("+00:00")


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    records = AuditLog(path).records()
    assert len(records) == 200
    assert len(path.read_text().splitlines()) == 200


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(AuditRecord("promote", "m", "champion", "1", "2", "a"))
    with open(path, "a") as fh:
        fh.write('{"action": "prom')
    assert len(log.records()) == 1
