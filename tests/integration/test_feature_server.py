"""`keel features serve`: Feast's own feature server on keel's repo answers what keel reads in-process; and
`keel features apply` with KEEL_FEAST_REGISTRY set registers the repo in Feast's SQL registry."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from pydantic import SecretStr

from keel.config import Settings
from keel.features import store
from keel.infra.probes import http_ok, wait_until
from keel.stack.supervisor import _group_members
from tests.conftest import KEEL, ROOT, free_ports, keel_env, run_keel
from tests.integration.conftest import DATA_END

UNKNOWN_CUSTOMER = 10**9


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (gunicorn's arbiter and its workers), wait, SIGKILL what is left."""
    pgid = proc.pid
    if proc.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
    if not wait_until(lambda: not _group_members(pgid), timeout=15):
        os.killpg(pgid, signal.SIGKILL)
        raise AssertionError(f"feature server processes {_group_members(pgid)} outlived SIGTERM")


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def feature_server(feature_data: dict[str, Path], stack_settings: Settings,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    (port,) = free_ports(1)
    log = tmp_path_factory.mktemp("feature_server") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KEEL, "features", "serve", "--port", str(port)], env=keel_env(stack_settings),
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: http_ok(f"{url}/health"), timeout=120, interval=0.5,
                          alive=lambda: proc.poll() is None):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            pytest.fail(f"`keel features serve` did not become healthy (exit code {proc.poll()}):\n{tail}")
        yield url
    finally:
        _stop_group(proc)


def _known_customers(feature_data: dict[str, Path], n: int) -> list[int]:
    spend = pd.read_parquet(feature_data["customer_spend"])
    fresh = spend[spend["event_timestamp"] > pd.Timestamp(DATA_END) - pd.Timedelta(days=1)]
    return sorted(int(c) for c in fresh["customer_id"].drop_duplicates().sample(n, random_state=1))


def test_server_answers_what_keel_reads_in_process(feature_server: str, feature_data: dict[str, Path],
                                                   stack_settings: Settings) -> None:
    customers = [*_known_customers(feature_data, 5), UNKNOWN_CUSTOMER]
    merchants = [c % 60 for c in customers]
    amounts = [12.5, 99.0, 3.25, 480.0, 42.0, 7.0]
    status, body = _post(f"{feature_server}/get-online-features", {
        "feature_service": "fraud_model_v1",
        "entities": {"customer_id": customers, "merchant_id": merchants, "amount": amounts},
    })
    assert status == 200, body
    served = {name: res["values"] for name, res in zip(body["metadata"]["feature_names"], body["results"],
                                                         strict=True)}
    statuses = {name: res["statuses"] for name, res in zip(body["metadata"]["feature_names"], body["results"],
                                                           strict=True)}

    fs = store.open_store(stack_settings)
    rows = [{"customer_id": c, "merchant_id": m, "amount": a} for c, m, a in zip(customers, merchants, amounts,
                                                                                strict=True)]
    response = fs.get_online_features(features=store.feature_service(fs, "fraud_model_v1"), entity_rows=rows)
    local = response.to_dict()
    local_statuses = {name: [FieldStatus.Name(s) for s in res.statuses]
                      for name, res in zip(response.proto.metadata.feature_names.val, response.proto.results,
                                           strict=True)}

    assert set(served) == set(local)
    assert "amount_vs_customer_mean_24h" in served and "merchant_fraud_rate_30d" in served
    for name, values in local.items():
        assert served[name] == pytest.approx(values, nan_ok=True), name
        assert statuses[name] == local_statuses[name], name
    # known customers have every value, the unknown one none
    for name in ("amount_mean_24h", "credit_limit", "merchant_fraud_rate_30d"):
        assert None not in served[name][:-1], name
    assert served["amount_mean_24h"][-1] is None and served["credit_limit"][-1] is None
    assert served["merchant_fraud_rate_30d"][-1] is not None  # its merchant is known
    # the on-demand view runs in the server too (a missing mean counts as 0 there, by design)
    assert served["amount_vs_customer_mean_24h"][-1] == pytest.approx(amounts[-1])


def test_unknown_feature_service_is_a_client_error(feature_server: str) -> None:
    status, body = _post(f"{feature_server}/get-online-features",
                         {"feature_service": "fraud_v9", "entities": {"customer_id": [1], "merchant_id": [1]}})
    # Feast maps FeatureServiceNotFoundException to 404 (a 4xx, not a 5xx)
    assert status == 404, body
    assert "fraud_v9" in json.dumps(body)
    assert http_ok(f"{feature_server}/health")  # a bad request does not hurt the server


def test_oversized_bodies_are_413_before_parsing(feature_server: str) -> None:
    from tests.integration.bodylimit import assert_bodies_bounded

    assert_bodies_bounded(feature_server, "/get-online-features")
    assert http_ok(f"{feature_server}/health")


def test_apply_with_an_sql_registry(feature_data: dict[str, Path], stack_settings: Settings,
                                    tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    uri = f"sqlite:///{db}"
    proc = run_keel(["features", "apply"], stack_settings, timeout=180, KEEL_FEAST_REGISTRY=uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fraud_model_v1" in proc.stdout
    assert db.is_file()

    sql_settings = stack_settings.model_copy(update={"feast_registry": SecretStr(uri)})
    fs = store.open_store(sql_settings)
    assert fs.config.registry.registry_type == "sql"
    assert sorted(s.name for s in fs.list_feature_services()) == ["fraud_model_lite", "fraud_model_v1"]
    assert {v.name for v in fs.list_feature_views()} == {"customer_spend", "customer_profile", "merchant_risk"}
    # Feast's own tables hold them, under keel's project
    with sqlite3.connect(db) as con:
        rows = sorted(con.execute("SELECT feature_service_name, project_id FROM feature_services").fetchall())
    assert rows == [("fraud_model_lite", "keel_fraud"), ("fraud_model_v1", "keel_fraud")]
