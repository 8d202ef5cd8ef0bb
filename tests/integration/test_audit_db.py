"""Audit records in the platform database, as a release keeps them (every pod writes to one Postgres):
the same interface as the local JSONL file, on a real Postgres server."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from pydantic import SecretStr

from keel.config import Settings, load_settings
from keel.registry.audit import AuditDB, AuditRecord
from tests.conftest import free_ports, run_keel


def _writer(uri: str, worker: int, n: int) -> None:
    db = AuditDB(uri)
    for i in range(n):
        db.append(AuditRecord("promote", f"w{worker}", "champion", str(i), str(i + 1), f"writer-{worker}"))


def test_concurrent_pods_append_to_one_table_in_order(postgres: str) -> None:
    """Four processes (the controller, DAG pods, CLIs of a release) append at once: nothing is lost, and
    each writer's records come back in the order it wrote them."""
    # fork: the children start at once (spawn re-imports keel: ~10 s of the suite); no engine exists yet to share
    procs = [mp.get_context("fork").Process(target=_writer, args=(postgres, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = AuditDB(postgres)
    for w in range(4):
        mine = db.records(f"w{w}")
        assert [r.to_version for r in mine] == [str(i + 1) for i in range(25)]
        assert {r.actor for r in mine} == {f"writer-{w}"}
    assert len([r for r in db.records() if r.model.startswith("w")]) == 100


def test_registry_and_cli_use_the_database_when_configured(postgres: str, training_set: object,
                                                           stack_settings: Settings, tmp_path: Path) -> None:
    """With KEEL_AUDIT_DB the registry writes its alias changes to the database (not KEEL_HOME), and
    `keel audit` reads them back from it."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.registry.client import Registry

    s = stack_settings.model_copy(update={"audit_db": SecretStr(postgres)})
    reg = Registry(s)
    trained = train_fraud_model(training_set, n_estimators=10)
    v = reg.register(trained.model, "fraud_audit_db", training_set, trained.holdout, trained.metrics).version
    reg.promote("fraud_audit_db", reason="test: audited in the database")
    actions = [(r.action, r.to_version) for r in AuditDB(postgres).records("fraud_audit_db")]
    assert actions == [("register", v), ("promote", v)], actions
    assert not any(r.model == "fraud_audit_db" for r in stack_settings.audit().records())

    out = run_keel(["audit", "fraud_audit_db"], stack_settings, KEEL_AUDIT_DB=postgres)
    assert out.returncode == 0, out.stderr
    assert "audited in the database" in out.stdout


def test_an_unreachable_audit_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path)
    uri = f"postgresql+psycopg://keel:hunter2secret@127.0.0.1:{free_ports(1)[0]}/keel"
    out = run_keel(["audit", "fraud"], s, timeout=60, KEEL_AUDIT_DB=uri)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "audit database postgresql+psycopg://keel:***@127.0.0.1" in lines[0], out.stderr
    assert "hunter2secret" not in out.stderr + out.stdout


def _hold(uri: str | None, path: str, model: str, ready: object, release: object) -> None:
    from keel.registry.audit import AuditLog

    with (AuditDB(uri) if uri else AuditLog(Path(path))).lock(model):
        ready.set()  # type: ignore[attr-defined]
        release.wait(60)  # type: ignore[attr-defined]


def test_the_alias_lock_is_one_holder_at_a_time_across_processes(postgres: str, tmp_path: Path) -> None:
    """Postgres' advisory lock (what pods share) and the local file lock: while one process holds a
    model's lock another waits and then gives up with one line naming the model; other models are free,
    and the lock is free again once its holder is done."""
    import pytest

    from keel.errors import KeelError
    from keel.registry.audit import AuditLog

    ctx = mp.get_context("fork")
    for store, uri in ((AuditDB(postgres), postgres), (AuditLog(tmp_path / "audit.jsonl"), None)):
        ready, release = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=_hold, args=(uri, str(tmp_path / "audit.jsonl"), "m1", ready, release))
        holder.start()
        try:
            assert ready.wait(60)
            with pytest.raises(KeelError, match="another alias change of model 'm1' has held its lock"), \
                    store.lock("m1", timeout=1.0):
                pass
            with store.lock("m2", timeout=1.0):
                pass
        finally:
            release.set()
            holder.join(60)
        assert holder.exitcode == 0
        with store.lock("m1", timeout=5.0):
            pass

