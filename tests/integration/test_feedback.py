"""Ground truth in, model quality out, against real services: a served model's real prediction log, the
keel controller's real HTTP endpoint (its own server on a free loopback port, stopped by the fixture),
MLflow for what the model is, the Pushgateway and Prometheus for the gauges.

Outcomes go in by request id (the CLI, from a CSV) and by entity key + event time (the SDK); duplicates
count once; bad input is refused whole with the row and field named, oversized bodies with 413, a call
without the token with 401. The performance job's figures equal a brute-force join, reach Prometheus, and
every panel of the Model quality dashboard has data."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from keel.config import Settings
from tests.conftest import free_ports, run_keel

MODEL = "fraud_feedback"


def _post(url: str, body: Any, token: str | None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=raw if raw is not None else json.dumps(body).encode(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _query(s: Settings, expr: str) -> list[dict[str, Any]]:
    url = f"{s.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    return got


@pytest.fixture(scope="module")
def served(training_set: Any, stack_settings: Settings, deployer: Any) -> dict[str, Any]:
    """MODEL v1 served; 40 one-row and 10 three-row requests answered and flushed to the prediction log."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.registry.client import Registry
    from keel.serving import predlog
    from keel.train import time_split

    trained = train_fraud_model(training_set)
    reg = Registry(stack_settings)
    reg.register(trained.model, MODEL, training_set, trained.holdout, trained.metrics)
    reg.promote(MODEL)
    (port,) = free_ports(1)
    url = deployer(model=MODEL, port=port)
    _, holdout = time_split(training_set.frame)
    rows = holdout.sample(n=70, random_state=3)[["customer_id", "merchant_id", "amount"]]
    recs = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]
    requests = [recs[i:i + 1] for i in range(40)] + [recs[40 + 3 * i:43 + 3 * i] for i in range(10)]
    answers = []
    for inst in requests:
        sent = datetime.now(UTC)
        req = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", data=json.dumps({"instances": inst}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answers.append({"instances": inst, "sent": sent, **json.loads(resp.read())})
    uri = stack_settings.predictions_location
    _wait("the prediction log to be flushed", lambda: len(predlog.read(uri, MODEL)) >= 70, 60)
    return {"answers": answers, "url": url}


def test_feedback_by_request_id_and_by_entity_and_time_counts_each_outcome_once(
        served: dict[str, Any], controller: Settings, tmp_path: Path) -> None:
    from keel.client import Client
    from keel.monitoring.outcomes import read

    s = controller
    answers = served["answers"]
    rng = np.random.default_rng(5)
    by_id = [{"request_id": a["request_id"], "row": k, "is_fraud": int(rng.integers(0, 2))}
             for a in answers[:30] for k in range(len(a["instances"]))]
    by_id += [{"request_id": a["request_id"], "row": k, "is_fraud": int(rng.integers(0, 2))}
              for a in answers[40:45] for k in range(3)]
    csv = tmp_path / "outcomes.csv"
    pd.DataFrame(by_id).to_csv(csv, index=False)
    cli = run_keel(["feedback", MODEL, str(csv), "--label-column", "is_fraud"], s)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"{MODEL}: 45 outcomes, 45 stored, 0 duplicates, 0 corrections"
    again = run_keel(["feedback", MODEL, str(csv), "--label-column", "is_fraud", "-o", "json"], s)
    assert json.loads(again.stdout) | {"model": MODEL} == {"model": MODEL, "rows": 45, "accepted": 0,
                                                            "duplicates": 45, "corrected": 0}
    # the SDK, by entity keys + the time the request was sent: 10 of them the same predictions as above
    by_entity = [{**a["instances"][0], "event_timestamp": a["sent"].isoformat(), "label": 1}
                 for a in answers[20:40]]
    for o in by_entity:
        o.pop("amount")
    got = Client(s).feedback(MODEL, by_entity)
    first_20_30 = {o["request_id"]: o["is_fraud"] for o in by_id if o["request_id"] in
                   {a["request_id"] for a in answers[20:30]}}
    same = sum(1 for v in first_20_30.values() if v == 1)
    assert got == {"model": MODEL, "rows": 20, "accepted": 10, "duplicates": same, "corrected": 10 - same}
    stored = read(s.outcomes_location, MODEL)
    assert len(stored) == 55 and stored["outcome_id"].is_unique
    assert set(stored["source"]) == {"request", "entity"}
    assert {"customer_id", "merchant_id", "event_timestamp"} <= set(stored.columns)


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"model": MODEL, "outcomes": [{"request_id": "0" * 32, "label": 1}]}, 422,
     "outcomes[0].request_id: unknown request id '00000000000000000000000000000000'"),
    ({"model": MODEL, "outcomes": "ANSWER0"}, 422, "outcomes[1].label: expected 0 or 1 (or true/false) for a binary "
                                                   "model (got 'fraud')"),
    ({"model": MODEL, "outcomes": [{"customer_id": "x", "merchant_id": 1, "event_timestamp": 5, "label": 1}]}, 422,
     "outcomes[0]: no logged prediction of 'fraud_feedback' for customer_id='x', merchant_id=1 within 300s of "
     "1970-01-01T00:00:05+00:00"),
    ({"model": MODEL, "outcomes": [{"customer_id": 1, "event_timestamp": 5, "label": 1}]}, 422,
     "outcomes[0].merchant_id: missing; an outcome names its prediction by request_id or by customer_id + "
     "merchant_id + event_timestamp"),
    ({"model": "ghost", "outcomes": [{"request_id": "a", "label": 1}]}, 404, "ghost"),
    ({"model": MODEL}, 400, "outcomes: expected a list"),
    ({"model": MODEL, "outcomes": [{"request_id": "a", "label": 1}] * 10_001}, 413, "at most 10000"),
])
def test_bad_feedback_is_refused_whole_with_the_row_and_field_named(
        served: dict[str, Any], controller: Settings, body: dict[str, Any], code: int, says: str) -> None:
    from keel.monitoring.outcomes import read

    s = controller
    if body.get("outcomes") == "ANSWER0":
        rid = served["answers"][0]["request_id"]
        body = {**body, "outcomes": [{"request_id": rid, "label": 1}, {"request_id": rid, "label": "fraud"}]}
    before = len(read(s.outcomes_location, MODEL))
    status, out = _post(f"{s.controller_url}/v1/feedback", body, s.token())
    assert status == code and says in out["error"], (status, out)
    assert len(read(s.outcomes_location, MODEL)) == before


def test_feedback_needs_the_token_and_bounds_the_body(controller: Settings) -> None:
    s = controller
    url = f"{s.controller_url}/v1/feedback"
    body = {"model": MODEL, "outcomes": [{"request_id": "a", "label": 1}]}
    assert _post(url, body, None)[0] == 401
    assert _post(url, body, "wrong-token")[0] == 401
    status, out = _post(url, None, s.token(), raw=b'{"model": "x", "outcomes": ["' + b"y" * 5_000_000 + b'"]}')
    assert status == 413 and "too large" in out["error"]
    status, out = _post(url, None, s.token(), raw=b"{not json")
    assert status == 400 and "not JSON" in out["error"]
    with urllib.request.urlopen(f"{s.controller_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'keel_feedback_requests_refused_total{code="413"}' in text


def test_cli_names_the_bad_row_by_its_line_in_the_file(served: dict[str, Any], controller: Settings,
                                                       tmp_path: Path) -> None:
    rid = served["answers"][0]["request_id"]
    rows = [{"request_id": rid, "label": 1}] * 2_500 + [{"request_id": rid, "label": 7}]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = run_keel(["feedback", MODEL, str(path)], controller)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "outcomes[2500].label: expected 0 or 1" in out.stderr and "the 2000 rows before were stored" in out.stderr
    missing = run_keel(["feedback", MODEL, str(tmp_path / "none.csv")], controller)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_the_performance_job_equals_a_brute_force_join_and_fills_its_dashboard(
        served: dict[str, Any], controller: Settings) -> None:
    from sklearn import metrics as sk

    from keel.monitoring.dashboard_performance import performance
    from keel.monitoring.dashboards import panel_queries
    from keel.monitoring.outcomes import read
    from keel.serving import predlog

    s = controller
    if len(read(s.outcomes_location, MODEL)) < 55:  # run alone: give it the outcomes the first test sends
        pytest.skip("needs the outcomes of test_feedback_by_request_id_and_by_entity_and_time_counts_each_outcome_once")
    out = run_keel(["performance", "run", MODEL, "--window", "1h", "-o", "json"], s)
    assert out.returncode == 0, out.stderr
    (v,) = json.loads(out.stdout)["versions"]
    logged = predlog.read(s.predictions_location, MODEL)
    joined = logged.merge(read(s.outcomes_location, MODEL)[["request_id", "row", "label"]], on=["request_id", "row"])
    assert (v["served_rows"], v["labelled_rows"]) == (len(logged), len(joined)) == (70, 55)
    assert v["metrics"]["roc_auc"] == pytest.approx(sk.roc_auc_score(joined["label"], joined["prediction"]))
    assert v["metrics"]["recall"] == pytest.approx(sk.recall_score(joined["label"], joined["prediction"] >= 0.5))
    assert v["decay"] is None  # 55 labelled rows, fewer than the default min_labels (100): no verdict
    _wait("the performance gauges in Prometheus",
          lambda: _query(s, f'keel_model_label_coverage_ratio{{model="{MODEL}"}}'), 60)
    assert float(_query(s, f'keel_model_label_coverage_ratio{{model="{MODEL}"}}')[0]["value"][1]) == 55 / 70
    empty = [f"{title}: {expr}" for title, expr in panel_queries(performance())
             if "decay" not in expr and not _query(s, expr)]
    assert not empty, "Model quality panels without data:\n" + "\n".join(empty)


def test_served_rows_with_outcomes_are_a_training_source_with_the_features_as_served(
        served: dict[str, Any], controller: Settings, feature_data: dict[str, Path], tmp_path: Path) -> None:
    """A spec whose model trains on feedback: the training set is the served rows that got an outcome, each
    with the feature values the server scored, and the outcome as the label; `both` adds the labelled
    events' point-in-time join."""
    import yaml

    from keel.client import Client
    from keel.monitoring.outcomes import read
    from keel.serving import predlog
    from tests.conftest import ROOT

    spec = {"name": "feedback-test", "feature_repo": str(ROOT / "examples" / "fraud" / "feature_repo"),
            "models": {MODEL: {"feature_service": "fraud_model_v1", "label": "is_fraud",
                               "labels": str(feature_data["transactions"]), "task": "binary",
                               "train": "fraud_model:train_fraud_model",
                               "training": {"source": "feedback", "feedback_window": "1d"}}}}
    (tmp_path / "keel.yaml").write_text(yaml.safe_dump(spec))
    s = controller.model_copy(update={"project": tmp_path / "keel.yaml"})
    ts = Client(s).training_set(MODEL)
    logged = predlog.read(s.predictions_location, MODEL)
    outcomes = read(s.outcomes_location, MODEL)
    expected = logged.merge(outcomes[["request_id", "row", "label"]], on=["request_id", "row"])
    expected = expected[~expected["degraded"].astype(bool)]
    assert len(ts.frame) == len(expected) > 0 and ts.engine == "feedback"
    got = ts.frame.sort_values(["event_timestamp", "customer_id", "merchant_id"]).reset_index(drop=True)
    want = expected.assign(event_timestamp=pd.to_datetime(expected["timestamp"], utc=True)).sort_values(
        ["event_timestamp", "customer_id", "merchant_id"]).reset_index(drop=True)
    for f in ts.features:
        assert np.allclose(got[f].astype(float), want[f].astype(float), equal_nan=True), f
    assert (got["is_fraud"].to_numpy() == want["label"].astype(int).to_numpy()).all()
    spec["models"][MODEL]["training"]["source"] = "both"
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "keel.yaml").write_text(yaml.safe_dump(spec))
    both = Client(controller.model_copy(update={"project": tmp_path / "both" / "keel.yaml"})).training_set(MODEL)
    assert both.engine == "keel+feedback" and len(both.frame) == len(ts.frame) + len(
        pd.read_parquet(feature_data["transactions"]))


def test_the_outcome_store_is_a_feast_readable_source(served: dict[str, Any], controller: Settings,
                                                      tmp_path: Path) -> None:
    """A Feast feature view over the outcome partitions (a FileSource on their glob): Feast's own DuckDB
    offline store joins each stored outcome back to its entity and time, corrections included (the store
    holds the superseded row too; received_at decides)."""
    from datetime import timedelta

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Float64

    from keel.monitoring.outcomes import read

    s = controller
    stored = read(s.outcomes_location, MODEL)
    if stored.empty:
        pytest.skip("needs the outcomes of test_feedback_by_request_id_and_by_entity_and_time_counts_each_outcome_once")
    cfg = RepoConfig(project="keel_outcomes", provider="local", registry=str(tmp_path / "registry.db"),
                     online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
                     offline_store={"type": "duckdb"}, entity_key_serialization_version=3, repo_path=str(tmp_path))
    store = FeatureStore(config=cfg)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    # received_at as Feast's created timestamp: a correction (same prediction, later) wins Feast's tie-break
    source = FileSource(name="outcomes", path=f"{s.outcomes_location}/model={MODEL}/*/*.parquet",
                        timestamp_field="event_timestamp", created_timestamp_column="received_at")
    view = FeatureView(name="outcomes", entities=[customer], ttl=timedelta(days=1), source=source, online=False,
                       schema=[Field(name="label", dtype=Float64)])
    store.apply([customer, view])
    last = stored.sort_values("event_timestamp").groupby("customer_id").tail(1)
    got = store.get_historical_features(last[["customer_id", "event_timestamp"]], ["outcomes:label"]).to_df()
    want = last.set_index("customer_id")["label"]
    assert got.set_index("customer_id")["label"].sort_index().tolist() == want.sort_index().tolist()
