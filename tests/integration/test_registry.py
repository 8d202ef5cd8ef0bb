"""The registry on a real MLflow server: lineage, the promotion gate, force, rollback, audit."""

from __future__ import annotations

import json

import pytest
from examples.fraud.fraud_model import train_fraud_model

from keel.config import Settings
from keel.errors import GateRefusedError, KeelError, NotFoundError
from keel.features.training import TrainingSet
from keel.registry.client import Registry
from keel.registry.lineage import LINEAGE_KEYS
from tests.conftest import run_keel


@pytest.fixture(scope="module")
def models(training_set: TrainingSet):
    good = train_fraud_model(training_set)
    bad = train_fraud_model(training_set, n_estimators=1, max_depth=1)
    assert good.metrics["roc_auc"] > bad.metrics["roc_auc"] + 0.02
    return good, bad


@pytest.fixture(scope="module")
def registry(stack_settings: Settings) -> Registry:
    return Registry(stack_settings)


def test_register_records_lineage_signature_and_stats(registry: Registry, training_set: TrainingSet, models) -> None:
    good, _ = models
    v = registry.register(good.model, "lineage_check", training_set, good.holdout, good.metrics, good.params)
    assert v.aliases == ["challenger"]
    for key in LINEAGE_KEYS:
        assert v.tags.get(f"keel.{key}"), key
    assert v.tags["keel.feature_service"] == "fraud_model_v1"
    assert v.tags["keel.training_set_hash"] == training_set.snapshot_hash
    assert v.tags["keel.feature_definition_hash"] == training_set.definition_hash
    assert v.tags["keel.feature_views"] == "customer_profile,customer_spend,merchant_risk,transaction_ratios"
    assert float(v.tags["keel.metric.roc_auc"]) == pytest.approx(good.metrics["roc_auc"])
    stats = registry.feature_stats(v)
    assert set(stats) == set(training_set.features)
    col = training_set.frame["amount_mean_24h"]
    assert stats["amount_mean_24h"]["mean"] == pytest.approx(col.mean())
    assert stats["amount_mean_24h"]["default"] == pytest.approx(col.median())
    assert stats["amount_mean_24h"]["null_fraction"] == pytest.approx(col.isna().mean())
    # signature in the model's column order, and the model round-trips
    import mlflow

    info = mlflow.models.get_model_info(v.uri)
    assert [c.name for c in info.signature.inputs.inputs] == training_set.features
    loaded = registry.load(v)
    X = good.holdout[training_set.features].head(20)
    assert (loaded.predict_proba(X) == good.model.predict_proba(X)).all()


def test_gate_promote_refuse_force_rollback_and_audit(registry: Registry, training_set: TrainingSet, models,
                                                      stack_settings: Settings) -> None:
    good, bad = models
    name = "fraud_gate"
    v1 = registry.register(good.model, name, training_set, good.holdout, good.metrics, reason="first")
    assert registry.promote(name, reason="first champion").version == v1.version

    v2 = registry.register(bad.model, name, training_set, bad.holdout, bad.metrics)
    with pytest.raises(GateRefusedError, match=f"v{v2.version} refused: roc_auc"):
        registry.promote(name)
    assert registry.resolve(name, "champion").version == v1.version  # unchanged
    assert registry.resolve(name, "challenger").version == v2.version

    with pytest.raises(KeelError, match="--force needs --reason"):
        registry.promote(name, force=True)
    forced = registry.promote(name, force=True, reason="hotfix for incident 42")
    assert forced.version == v2.version and registry.resolve(name, "champion").version == v2.version

    back = registry.rollback(name, reason="bad canary")
    assert back.version == v1.version == registry.resolve(name, "champion").version
    with pytest.raises(KeelError, match="no previous champion"):
        registry.rollback(name)

    records = registry.audit.records(name)
    assert [(r.action, r.alias, r.from_version, r.to_version) for r in records] == [
        ("register", "challenger", None, v1.version),
        ("promote", "champion", None, v1.version),
        ("register", "challenger", None, v2.version),
        ("promote-refused", "champion", v1.version, v1.version),
        ("force-promote", "champion", v1.version, v2.version),
        ("rollback", "champion", v2.version, v1.version),
    ]
    assert records[4].reason == "hotfix for incident 42" and records[5].reason == "bad canary"
    assert all(r.actor == "pytest" for r in records)

    # the CLI shows the same trail
    proc = run_keel(["audit", name, "-o", "json"], stack_settings)
    assert proc.returncode == 0, proc.stderr
    assert [r["action"] for r in json.loads(proc.stdout)] == [r.action for r in records]


def test_gate_rescores_champion_on_the_challengers_holdout(registry: Registry, training_set: TrainingSet,
                                                           models) -> None:
    good, _ = models
    name = "fraud_rescore"
    registry.register(good.model, name, training_set, good.holdout)
    registry.promote(name)
    other_holdout = good.holdout.sample(frac=0.5, random_state=1)
    v2 = registry.register(good.model, name, training_set, other_holdout)
    g = registry.gate(name)
    assert g.evaluated_on == v2.tags["keel.holdout_hash"]
    assert g.champion == pytest.approx(g.challenger)  # same model, same rows
    assert g.passed


def test_idempotent_register(registry: Registry, training_set: TrainingSet, models) -> None:
    good, _ = models
    a = registry.register(good.model, "fraud_idem", training_set, good.holdout, idempotency_key="run-1")
    b = registry.register(good.model, "fraud_idem", training_set, good.holdout, idempotency_key="run-1")
    assert a.version == b.version
    assert len(registry.show("fraud_idem")["versions"]) == 1


def test_unknown_names_list_the_valid_choices(registry: Registry, stack_settings: Settings, training_set,
                                              models) -> None:
    good, _ = models
    registry.register(good.model, "fraud_names", training_set, good.holdout)
    with pytest.raises(NotFoundError, match=r"unknown model 'nosuch'; valid choices: .*fraud_names"):
        registry.show("nosuch")
    with pytest.raises(NotFoundError, match="unknown alias 'champion' of model 'fraud_names'; valid choices: "
                                            "challenger"):
        registry.resolve("fraud_names", "champion")
    for args, needle in [(["promote", "nosuch"], "unknown model 'nosuch'"),
                         (["models", "show", "nosuch"], "unknown model 'nosuch'"),
                         (["rollback", "fraud_names"], "has no champion")]:
        proc = run_keel(args, stack_settings)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("keel: error: ") and needle in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_models_list_and_show_formats(registry: Registry, stack_settings: Settings) -> None:
    proc = run_keel(["models", "list", "-o", "json"], stack_settings)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["fraud_gate"]["champion"] is not None
    table = run_keel(["models", "list"], stack_settings).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "CHAMPION", "CHALLENGER"]
    shown = run_keel(["models", "show", "fraud_gate", "-o", "yaml"], stack_settings)
    assert shown.returncode == 0 and "feature_service: fraud_model_v1" in shown.stdout


def test_a_promotion_and_a_rollback_released_together_keep_one_audit_chain(
        stack_settings: Settings, training_set: TrainingSet, models) -> None:
    """Two SDK clients, a promotion and a rollback released by a barrier, 20 rounds: every champion change
    is recorded from the version it really replaced, no record is a no-op, and the last one names the
    champion the registry holds."""
    import itertools
    import threading

    good, bad = models
    name = "fraud_race"
    first = Registry(stack_settings)
    v1 = first.register(good.model, name, training_set, good.holdout, good.metrics).version
    first.promote(name, reason="first")
    v2 = first.register(bad.model, name, training_set, bad.holdout, bad.metrics).version
    first.promote(name, force=True, reason="second")  # history 1,2: a rollback has somewhere to go
    clients = [Registry(stack_settings), Registry(stack_settings)]
    outcomes: dict[str, int] = {}
    for _ in range(20):
        champion = first.resolve(name, "champion").version
        first.client.set_registered_model_alias(name, "challenger", v1 if champion == v2 else v2)
        barrier = threading.Barrier(2)

        def run(call: str, reg: Registry, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                if call == "promote":
                    reg.promote(name, force=True, reason="race")
                else:
                    reg.rollback(name, reason="race")
                outcomes[call] = outcomes.get(call, 0) + 1
            except KeelError as exc:  # a change the other one made moot: refused, not half-done
                outcomes[f"{call} refused"] = outcomes.get(f"{call} refused", 0) + 1
                assert "already the champion" in str(exc) or "no previous champion" in str(exc), exc

        threads = [threading.Thread(target=run, args=(c, r)) for c, r in zip(("promote", "rollback"), clients,
                                                                              strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    changes = [r for r in first.audit.records(name) if r.alias == "champion" and r.action != "promote-refused"]
    assert len(changes) >= 2 + 20, outcomes  # each round changes the champion at least once
    for earlier, later in itertools.pairwise(changes):
        assert later.from_version == earlier.to_version, (earlier, later)
    assert all(r.from_version != r.to_version for r in changes)
    assert changes[-1].to_version == first.resolve(name, "champion").version
    history = first.show(name)["champion_history"]
    assert history[-1] == changes[-1].to_version and all(a != b for a, b in itertools.pairwise(history))
