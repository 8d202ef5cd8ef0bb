"""A project keel did not write, driven as its user would: the delivery example copied out of keel's tree
(string entity key, categorical string feature, relative paths in its Feast repo, feature rows that arrive
after their event time, a regression and a multiclass model, its own training functions and spec), through
apply → materialize → training set → train → gate → deploy (two models side by side) → predict → drift →
its retraining DAG in real Airflow → promoted and serving. No keel code knows the project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from keel.config import Settings
from tests.conftest import ROOT, keel_env, run_keel

END = "2026-11-01"


@pytest.fixture(scope="module")
def delivery(stack, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The delivery project in a directory of its own, on the session stack; its deployments are
    undeployed afterwards, whatever the tests did."""
    root = tmp_path_factory.mktemp("user") / "delivery"
    shutil.copytree(ROOT / "examples" / "delivery", root, ignore=shutil.ignore_patterns("data", "__pycache__"))
    s = stack_settings.model_copy(update={"project": root})
    s._spec = None
    try:
        yield s
    finally:
        for model in ("delivery_time", "delivery_speed"):
            run_keel(["undeploy", model], s)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _post(url: str, body: object) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_user_project_from_data_to_two_served_models(delivery: Settings) -> None:
    s = delivery
    repo_data = Path(s.project) / "feature_repo" / "data"
    out = _ok(run_keel(["data", "generate", "--rows", "6000", "--end", END], s))
    assert "orders" in out and (repo_data / "orders.parquet").exists()
    # relative registry and source paths are the repo's, though keel runs from its own checkout
    assert "applied 3 objects: courier_stats, delivery_v1, expected" in _ok(run_keel(["features", "apply"], s))
    assert (repo_data / "registry.db").exists() and not (ROOT / "data" / "registry.db").exists()
    # long work shows progress (forced here: the test's stderr is not a terminal)
    mat = run_keel(["features", "materialize", "--end", f"{END}T00:00:00"], s, KEEL_PROGRESS="1")
    _ok(mat)
    assert re.search(r"courier_stats: 100%.*\b\d+(\.\d+)?k?/\d+(\.\d+)?k? \[", mat.stderr), mat.stderr
    ts = run_keel(["features", "training-set", "delivery_time"], s, KEEL_PROGRESS="1")
    assert "rows: 6000" in _ok(ts) and "created_filter: 'on'" in ts.stdout
    assert "s] training set: 6,000 rows" in ts.stderr, ts.stderr

    trained = run_keel(["train", "delivery_time"], s, KEEL_PROGRESS="1")
    assert "registered delivery_time v1 as challenger (regression)" in _ok(trained) and "rmse=" in trained.stdout
    for step in ("point-in-time join", "scoring the holdout", "uploading statistics and holdout",
                 "uploading the model (sklearn flavor)", "aliasing it challenger"):
        assert step in trained.stderr, trained.stderr
    assert "v1 is now champion" in _ok(run_keel(["promote", "delivery_time"], s))
    # a much weaker challenger: rmse is lower-is-better, so the gate refuses it (exit 3)
    _ok(run_keel(["train", "delivery_time", "--param", "max_iter=3"], s))
    refused = run_keel(["promote", "delivery_time"], s)
    assert refused.returncode == 3 and "rmse" in refused.stderr, refused.stderr
    assert "(multiclass)" in _ok(run_keel(["train", "delivery_speed"], s))
    _ok(run_keel(["promote", "delivery_speed"], s))

    for model in ("delivery_time", "delivery_speed"):
        assert f"serving {model} v1" in _ok(run_keel(["deploy", model], s))
    status = {r["service"]: r["state"] for r in json.loads(_ok(run_keel(["status", "-o", "json"], s)))}
    assert status["serve-delivery_time"] == status["serve-delivery_speed"] == "healthy"

    minutes = json.loads(_ok(run_keel(["predict", "delivery_time", "--entity", "courier_id=c0007", "--entity",
                                       "distance_km=3.5", "-o", "json"], s)))
    assert minutes["model"] == "delivery_time" and isinstance(minutes["predictions"][0], float)
    assert minutes["degraded"] is False
    speed = json.loads(_ok(run_keel(["predict", "delivery_speed", "--entity", "courier_id=c0007", "--entity",
                                     "distance_km=3.5", "-o", "json"], s)))
    assert sorted(speed["classes"]) == ["fast", "normal", "slow"]
    assert abs(sum(speed["predictions"][0]) - 1.0) < 1e-6
    bad = run_keel(["predict", "delivery_time", "--json", '[{"courier_id": 7, "distance_km": 1.0}]'], s)
    assert bad.returncode == 2 and "instances[0].courier_id" in bad.stderr and "a string" in bad.stderr

    # each deployment answers its own requests, and the served score is the model's on the same features
    from keel.registry.client import Registry

    reg = Registry(s)
    v = reg.resolve("delivery_time", "champion")
    holdout = reg._holdout(v).tail(40)
    feats = v.tags["keel.features"].split(",")
    assert "vehicle" in feats and holdout["vehicle"].dtype == object
    url = "http://127.0.0.1:{}/v1/models/{}:predict"
    ports = {m: json.loads((s.home / "deployments" / f"{m}.json").read_text())["port"]
             for m in ("delivery_time", "delivery_speed")}
    requests = holdout[["courier_id", "distance_km"]].to_dict("records")
    got = _post(url.format(ports["delivery_time"], "delivery_time"), {"instances": requests})
    assert got["model"] == "delivery_time" and len(got["predictions"]) == 40
    other = _post(url.format(ports["delivery_speed"], "delivery_speed"), {"instances": requests})
    assert other["model"] == "delivery_speed" and len(other["classes"]) == 3

    # the dashboards' model variable (label_values of keel_requests_total) lists each deployment
    def models_in_prometheus() -> set[str]:
        q = urllib.request.urlopen(f"{s.prometheus_url}/api/v1/label/model/values?match[]=keel_requests_total",
                                   timeout=10)
        return set(json.loads(q.read())["data"])

    deadline = time.monotonic() + 90
    while not {"delivery_time", "delivery_speed"} <= models_in_prometheus() and time.monotonic() < deadline:
        time.sleep(2)  # waiting on Prometheus' next scrape of the new targets
    assert {"delivery_time", "delivery_speed"} <= models_in_prometheus()

    # drift over what was just served, against the champion's holdout (string column included)
    deadline = time.monotonic() + 60
    drift = run_keel(["drift", "run", "delivery_time", "--no-push", "-o", "json"], s, KEEL_PROGRESS="1")
    while drift.returncode != 0 and "no predictions" in drift.stderr and time.monotonic() < deadline:
        time.sleep(2)  # the prediction log flushes every 10 s
        drift = run_keel(["drift", "run", "delivery_time", "--no-push", "-o", "json"], s, KEEL_PROGRESS="1")
    report = json.loads(_ok(drift))
    assert "Evidently:" in drift.stderr and "logging the report to MLflow" in drift.stderr, drift.stderr
    assert {c["column"] for c in report["features"]} >= {"vehicle", "avg_minutes_7d"}
    assert report["version"] == "1"


def test_the_projects_retraining_dag_promotes_and_serves(delivery: Settings, tmp_path: Path) -> None:
    """`airflow dags test` of the DAG Airflow generates from the project's spec: train, gate (rmse within
    the spec's tolerance), promote, canary and smoke check through the real endpoint, full rollout."""
    airflow = str(ROOT / ".venv-airflow" / "bin" / "airflow")
    env = {**keel_env(delivery), "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "KEEL_CORE_PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    proc = subprocess.run([airflow, "dags", "test", "keel_retrain__delivery_time"], env=env, capture_output=True,
                          text=True, timeout=480, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from keel.registry.client import Registry

    champion = Registry(delivery).resolve("delivery_time", "champion")
    assert champion.version == "3" and champion.tags["keel.task"] == "regression"  # v2 was refused
    answer = json.loads(_ok(run_keel(["predict", "delivery_time", "--entity", "courier_id=c0001", "--entity",
                                      "distance_km=2", "-o", "json"], delivery)))
    assert answer["version"] == "3"
    audit = [json.loads(line) for line in delivery.audit_log.read_text().splitlines()]
    assert [a["action"] for a in audit if a["model"] == "delivery_time"][-1] == "promote"
    assert pd.Timestamp(champion.tags["keel.training_window_end"]) <= pd.Timestamp(END, tz="UTC")


def test_a_model_registered_without_keel_serves_raw_features_on_both_runtimes(stack, stack_settings: Settings,
                                                                               tmp_path: Path) -> None:
    """Plain `mlflow.sklearn.log_model` (with a signature): served in raw-feature mode, inputs validated
    against the signature; one without a signature is refused at deploy in seconds, exit 2, one line."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    s = stack_settings
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.uniform(18, 80, 300), "income": rng.uniform(1, 9, 300)})
    y = (X.age > 40).astype(int)
    clf = LogisticRegression().fit(X, y)
    mlflow.set_tracking_uri(s.tracking_uri)
    with mlflow.start_run():
        mlflow.sklearn.log_model(clf, name="model", registered_model_name="plain_lr",
                                 signature=mlflow.models.infer_signature(X, clf.predict(X)))
        mlflow.sklearn.log_model(clf, name="nosig", registered_model_name="plain_nosig")

    for runtime in ("kserve", "ray"):  # refused before any server starts: no crash loop, no hang
        t0 = time.monotonic()
        refused = run_keel(["deploy", "plain_nosig", "--version", "1", "--runtime", runtime], s)
        took = time.monotonic() - t0
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "signature names no inputs" in refused.stderr and "--feature-service" in refused.stderr
        assert took < 5.0, f"refusal took {took:.1f}s"
    assert "serve-plain_nosig" not in run_keel(["status"], s).stdout
    wrong = run_keel(["deploy", "plain_lr", "--version", "1", "--runtime", "kserve", "--batch-wait-ms", "2"], s)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "--batch-wait-ms" in wrong.stderr and "Ray runtime" in wrong.stderr and "kserve" in wrong.stderr
    too_long = run_keel(["deploy", "plain_lr", "--version", "1", "--runtime", "ray", "--batch-wait-ms", "5000"], s)
    assert too_long.returncode == 2 and "5000" in too_long.stderr, too_long.stderr

    expected = clf.predict_proba(X.head(3))[:, 1]
    instances = X.head(3).to_dict("records")
    for runtime in ("kserve", "ray"):
        try:
            _ok(run_keel(["deploy", "plain_lr", "--version", "1", "--runtime", runtime], s))
            out = json.loads(_ok(run_keel(["predict", "plain_lr", "--json", json.dumps(instances), "-o", "json"], s)))
            assert np.allclose(out["predictions"], expected), (runtime, out)
            bad = run_keel(["predict", "plain_lr", "--json", '[{"age": 30}]'], s)
            assert bad.returncode == 2 and "instances[0].income" in bad.stderr, (runtime, bad.stderr)
        finally:
            run_keel(["undeploy", "plain_lr"], s)


def test_lightgbm_and_generic_pyfunc_models_logged_without_keel_serve(stack, stack_settings: Settings,
                                                                       tmp_path: Path) -> None:
    import lightgbm as lgb
    import mlflow
    import numpy as np

    s = stack_settings
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"x1": rng.normal(size=400), "x2": rng.normal(size=400)})
    y = X.x1 * 2.0 - X.x2 + rng.normal(0, 0.1, 400)
    reg = lgb.LGBMRegressor(n_estimators=30, verbose=-1).fit(X, y)
    mlflow.set_tracking_uri(s.tracking_uri)
    with mlflow.start_run():
        mlflow.lightgbm.log_model(reg, name="model", registered_model_name="plain_lgbm",
                                  signature=mlflow.models.infer_signature(X, reg.predict(X)))
    # a generic pyfunc model, logged from code (MLflow's models-from-code), no native flavor at all
    code = tmp_path / "linear_model.py"
    code.write_text(textwrap.dedent("""\
        import mlflow


        class Linear(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return (model_input["x1"] * 2.0 - model_input["x2"]).to_numpy()


        mlflow.models.set_model(Linear())
        """))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name="plain_pyfunc",
                                signature=mlflow.models.infer_signature(X, (X.x1 * 2.0 - X.x2).to_numpy()))
    rows = json.dumps(X.head(4).to_dict("records"))
    try:
        _ok(run_keel(["deploy", "plain_lgbm", "--version", "1"], s))
        _ok(run_keel(["deploy", "plain_pyfunc", "--version", "1"], s))  # side by side with plain_lgbm
        out = json.loads(_ok(run_keel(["predict", "plain_lgbm", "--json", rows, "-o", "json"], s)))
        assert np.allclose(out["predictions"], reg.predict(X.head(4))), out
        out = json.loads(_ok(run_keel(["predict", "plain_pyfunc", "--json", rows, "-o", "json"], s)))
        assert np.allclose(out["predictions"], X.head(4).x1 * 2.0 - X.head(4).x2), out
        bad = run_keel(["predict", "plain_pyfunc", "--json", '[{"x1": "high", "x2": 1.0}]'], s)
        assert bad.returncode == 2 and "instances[0].x1" in bad.stderr, bad.stderr
    finally:
        run_keel(["undeploy", "plain_lgbm"], s)
        run_keel(["undeploy", "plain_pyfunc"], s)


MAP_REPO = {
    "feature_store.yaml": """\
        project: prefs
        provider: local
        registry: data/registry.db
        online_store:
          type: redis
          connection_string: ${FEAST_REDIS_CONNECTION}
        offline_store:
          type: duckdb
        entity_key_serialization_version: 3
        """,
    "definitions.py": """\
        from datetime import timedelta

        from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
        from feast.types import Float64, Json, Map, String

        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
        source = FileSource(name="users", path="data/users.parquet", timestamp_field="event_timestamp",
                            created_timestamp_column="created")
        profile = FeatureView(name="profile", entities=[user], ttl=timedelta(days=30), source=source, schema=[
            Field(name="user_id", dtype=String), Field(name="score", dtype=Float64),
            Field(name="prefs", dtype=Map), Field(name="meta", dtype=Json)])
        prefs_v1 = FeatureService(name="prefs_v1", features=[profile])
        """,
}


def test_map_and_json_features_train_and_are_refused_at_deploy(stack, stack_settings: Settings,
                                                               tmp_path: Path) -> None:
    """Map and Json features go through training sets (the same snapshot hash whatever the event order, the
    same rows from keel's engine and Feast's) and registration; deploying the model is refused in seconds,
    with one line naming them, on both runtimes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from keel.client import Client

    repo = tmp_path / "prefs_repo"
    (repo / "data").mkdir(parents=True)
    for name, text in MAP_REPO.items():
        (repo / name).write_text(textwrap.dedent(text))
    rng = np.random.default_rng(0)
    n = 400
    ts = pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 5 * 86_400, n), unit="s")
    schema = pa.schema([("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                        ("created", pa.timestamp("us", tz="UTC")), ("score", pa.float64()),
                        ("prefs", pa.map_(pa.string(), pa.string())), ("meta", pa.string())])
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({
        "user_id": [f"u{i % 100}" for i in range(n)], "event_timestamp": ts, "created": ts,
        "score": rng.normal(size=n),
        "prefs": [[("color", str(rng.choice(["red", "blue"]))), ("size", str(i % 3))] for i in range(n)],
        "meta": [json.dumps({"k": i, "tags": ["a", "b"][: i % 3]}) for i in range(n)]}), schema=schema,
        preserve_index=False), repo / "data" / "users.parquet")
    s = stack_settings.model_copy(update={"feature_repo": repo, "project": None})
    s._spec = None
    _ok(run_keel(["features", "apply"], s, KEEL_FEATURE_REPO=str(repo)))
    events = pd.DataFrame({"user_id": [f"u{i}" for i in range(100)], "y": rng.integers(0, 2, 100),
                           "event_timestamp": pd.Timestamp("2026-10-07", tz="UTC")})
    client = Client(s)
    ts_keel = client.training_set(feature_service="prefs_v1", labels=events, label="y")
    shuffled = client.training_set(feature_service="prefs_v1", labels=events.sample(frac=1.0, random_state=1),
                                   label="y")
    ts_feast = client.training_set(feature_service="prefs_v1", labels=events, label="y", engine="feast")
    assert ts_keel.snapshot_hash == shuffled.snapshot_hash == ts_feast.snapshot_hash
    assert ts_keel.unservable == {"prefs": "Map", "meta": "Json"}
    assert ts_keel.frame["meta"].notna().all() and isinstance(ts_keel.frame["meta"].iloc[0], str)

    # a model that uses only the scalar feature still takes the service's columns as its inputs
    model = make_pipeline(ColumnTransformer([("num", "passthrough", ["score"])]), LogisticRegression())
    model.fit(ts_keel.frame[ts_keel.features], ts_keel.frame["y"])
    v = client.register(model, "prefs_model", training_set=ts_keel, holdout=ts_keel.frame.tail(30))
    assert v.tags["keel.unservable_features"] == "prefs:Map,meta:Json"
    for runtime in ("kserve", "ray"):
        t0 = time.monotonic()
        refused = run_keel(["deploy", "prefs_model", "--alias", "challenger", "--runtime", runtime], s,
                           KEEL_FEATURE_REPO=str(repo))
        took = time.monotonic() - t0
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "'prefs' (Map), 'meta' (Json)" in refused.stderr and "prefs_v1" in refused.stderr, refused.stderr
        assert took < 5.0, f"refusal took {took:.1f}s"
    assert "serve-prefs_model" not in run_keel(["status"], s).stdout
