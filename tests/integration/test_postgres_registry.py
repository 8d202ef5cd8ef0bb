"""The registry as the chart runs it: MLflow's backend store, Feast's SQL registry and the audit records
on a real Postgres (the URIs in the chart's form, postgresql+psycopg://), driven through keel's own code
and read back from Postgres's own tables.
The rest of the suite runs them on SQLite and files, the zero-setup default."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from keel.config import Settings
from keel.features import store
from keel.registry.audit import AuditDB
from keel.stack import Stack
from tests.conftest import free_ports
from tests.integration.conftest import DATA_END
from tests.pgdb import database, rows


def test_mlflow_registry_and_audit_on_postgres(
        postgres: str, training_set: object, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from examples.fraud.fraud_model import train_fraud_model

    from keel.registry.client import Registry

    mlflow_db = database(postgres, "mlflow")
    home = tmp_path_factory.mktemp("pg") / "keel"
    s = stack_settings.model_copy(update={"home": home, "mlflow_port": free_ports(1)[0],
                                          "mlflow_db_uri": SecretStr(mlflow_db), "audit_db": SecretStr(postgres)})
    stack = Stack(s)
    try:
        stack.up(["mlflow"])
        # the password is passed in the environment, never on a command line any local user can read
        cmd = json.loads((home / "run" / "mlflow.json").read_text())["cmd"]
        assert urlsplit(postgres).password not in " ".join(cmd)

        reg = Registry(s)
        name = "fraud_pg"
        good = train_fraud_model(training_set, n_estimators=20)
        v1 = reg.register(good.model, name, training_set, good.holdout, good.metrics).version
        reg.promote(name, reason="first champion")
        v2 = reg.register(good.model, name, training_set, good.holdout, good.metrics).version
        reg.promote(name, reason="same model, new version")
        reg.rollback(name, reason="back to the first")
        assert reg.resolve(name, "champion").version == v1

        assert not list(home.rglob("*.db"))  # what MLflow knows is in Postgres, not in KEEL_HOME
        again = Registry(s)
        assert again.resolve(name, "champion").version == v1
        assert sorted(v["version"] for v in again.show(name)["versions"]) == sorted([v1, v2])
        assert rows(mlflow_db, f"SELECT version FROM model_versions WHERE name = '{name}' ORDER BY version") == [
            (int(v1),), (int(v2),)]
        trail = [(r.action, r.from_version, r.to_version) for r in AuditDB(postgres).records(name)]
        assert trail == [("register", None, v1), ("promote", None, v1), ("register", None, v2),
                         ("promote", v1, v2), ("rollback", v2, v1)], trail
    finally:
        stack.down()


def test_feast_sql_registry_on_postgres_serves_what_it_materialized(
        postgres: str, feature_data: dict[str, Path], stack_settings: Settings) -> None:
    uri = database(postgres, "feast")
    s = stack_settings.model_copy(update={"feast_registry": SecretStr(uri)})
    assert {"fraud_model_v1", "fraud_model_lite"} <= set(store.apply(s))
    store.materialize(s, end=DATA_END)
    fs = store.open_store(s)
    assert fs.config.registry.registry_type == "sql"
    assert sorted(x.name for x in fs.list_feature_services()) == ["fraud_model_lite", "fraud_model_v1"]
    assert rows(uri, "SELECT feature_service_name, project_id FROM feature_services ORDER BY 1") == [
        ("fraud_model_lite", "keel_fraud"), ("fraud_model_v1", "keel_fraud")]
    # the materialization intervals are Postgres's too: a second run of the same window has nothing to do
    views = {v.name: v for v in fs.list_feature_views()}
    assert all(v.materialization_intervals for v in views.values()), views
    # and Feast's own online read through this registry answers as the session's file registry does
    customers = [{"customer_id": c} for c in (1, 2, 3)]
    refs = ["customer_spend:txn_count_24h", "customer_spend:amount_mean_7d"]
    ours = fs.get_online_features(features=refs, entity_rows=customers).to_dict()
    base = store.open_store(stack_settings).get_online_features(features=refs, entity_rows=customers).to_dict()
    assert ours == base and any(v is not None for v in ours["txn_count_24h"])


def test_keel_up_with_a_local_postgres_keeps_the_platform_databases_there(
        training_set: object, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    """KEEL_DATABASE=postgres: `keel up` starts Postgres first (a Unix socket, no TCP port) and MLflow's
    backend store, Feast's registry and the audit records are its databases; they survive a restart."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.infra.probes import port_in_use
    from keel.registry.client import Registry
    from keel.stack import postgres as pg

    home = tmp_path_factory.mktemp("pgup") / "keel"
    s = stack_settings.model_copy(update={"home": home, "mlflow_port": free_ports(1)[0], "database": "postgres",
                                          "postgres_port": free_ports(1)[0]})
    assert s.audit_db_uri == pg.uri(s, "audit") and s.feast_registry_uri == pg.uri(s, "feast")
    stack = Stack(s)
    try:
        assert {st.name: st.state for st in stack.up(["postgres", "mlflow"])} == {
            "postgres": "healthy", "mlflow": "healthy"}
        assert not port_in_use(s.host, s.postgres_port)  # its socket only
        name = "fraud_pg_up"
        trained = train_fraud_model(training_set, n_estimators=10)
        reg = Registry(s)
        v = reg.register(trained.model, name, training_set, trained.holdout, trained.metrics).version
        reg.promote(name, reason="first champion")
        assert rows(pg.uri(s, "mlflow"), f"SELECT name FROM registered_models WHERE name = '{name}'") == [(name,)]
        assert [r.action for r in AuditDB(pg.uri(s, "audit")).records(name)] == ["register", "promote"]
        assert {"fraud_model_v1", "fraud_model_lite"} <= set(store.apply(s))
        assert ("fraud_model_v1",) in rows(pg.uri(s, "feast"), "SELECT feature_service_name FROM feature_services")
        assert not list(home.rglob("*.db")) and not (home / "audit.jsonl").exists()

        stack.down()  # a fast shutdown (SIGINT), not a wait for every client to leave
        stack.up(["postgres", "mlflow"])
        assert Registry(s).resolve(name, "champion").version == v
    finally:
        stack.down()
        pg.remove(s)
