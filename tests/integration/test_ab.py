"""A sticky A/B test on a real deployment: the champion and the challenger (a canary at 30 %) served side
by side by one KServe runtime process; every customer meets one variant, the one the keyed hash names;
outcomes arrive through the controller's endpoint; `keel ab report` equals a brute-force computation
from the prediction log and the outcome store; `keel promote --ab` decides by it and records it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np
import pytest

from keel.config import Settings
from tests.conftest import free_ports, run_keel

MODEL = "fraud_ab"


@pytest.fixture(scope="module")
def ab_traffic(training_set: Any, stack_settings: Settings, deployer: Any, controller: Settings) -> dict[str, Any]:
    from examples.fraud.fraud_model import train_fraud_model

    from keel.client import Client
    from keel.registry.client import Registry
    from keel.serving import predlog
    from keel.train import time_split

    reg = Registry(stack_settings)
    a = train_fraud_model(training_set)
    reg.register(a.model, MODEL, training_set, a.holdout, a.metrics)
    reg.promote(MODEL)
    b = train_fraud_model(training_set, n_estimators=60, max_depth=3, seed=2)
    reg.register(b.model, MODEL, training_set, b.holdout, b.metrics)
    (port,) = free_ports(1)
    url = deployer(model=MODEL, port=port, canary_alias="challenger", canary_weight=0.3)
    _, holdout = time_split(training_set.frame)
    rows = holdout.sample(n=1200, random_state=11)
    versions: dict[int, set[str]] = {}
    answers = []
    for r in rows.itertuples():
        inst = [{"customer_id": int(r.customer_id), "merchant_id": int(r.merchant_id), "amount": float(r.amount)}]
        req = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", data=json.dumps({"instances": inst}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())
        versions.setdefault(int(r.customer_id), set()).add(out["version"])
        answers.append({"request_id": out["request_id"], "label": int(r.is_fraud)})
    deployer.target.undeploy(MODEL)  # a graceful stop flushes the prediction log
    assert len(predlog.read(stack_settings.predictions_location, MODEL)) == len(rows)
    sent = Client(controller).feedback(MODEL, answers)
    assert sent["accepted"] == len(answers)
    return {"versions": versions, "rows": rows}


def test_every_customer_meets_the_variant_its_hash_names(ab_traffic: dict[str, Any]) -> None:
    from keel.serving.router import bucket

    versions = ab_traffic["versions"]
    assert all(len(v) == 1 for v in versions.values())
    assert {c: next(iter(v)) for c, v in versions.items()} == {c: "2" if bucket(MODEL, c) < 0.3 else "1"
                                                               for c in versions}
    rows = ab_traffic["rows"]
    share = (rows["customer_id"].map(lambda c: next(iter(versions[int(c)]))) == "2").mean()
    print(f"canary share of {len(rows)} requests over {len(versions)} customers: {share:.3f} (weight 0.30)")


def test_the_ab_report_equals_a_brute_force_computation(ab_traffic: dict[str, Any], controller: Settings) -> None:
    from sklearn import metrics as sk

    from keel.monitoring.outcomes import read
    from keel.serving import predlog

    s = controller
    out = run_keel(["ab", "report", MODEL, "--window", "1h", "--n-boot", "400", "--seed", "3", "-o", "json"], s)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    logged = predlog.read(s.predictions_location, MODEL)
    joined = logged.merge(read(s.outcomes_location, MODEL)[["request_id", "row", "label"]], on=["request_id", "row"])
    a, b = joined[joined["role"] == "primary"], joined[joined["role"] == "canary"]
    assert set(a["version"]) == {"1"} and set(b["version"]) == {"2"}
    assert (r["a"]["labelled_rows"], r["b"]["labelled_rows"]) == (len(a), len(b))
    auc_a, auc_b = sk.roc_auc_score(a["label"], a["prediction"]), sk.roc_auc_score(b["label"], b["prediction"])
    assert (r["a"]["value"], r["b"]["value"], r["diff"]) == pytest.approx((auc_a, auc_b, auc_b - auc_a), abs=1e-12)
    rng = np.random.default_rng(3)
    ya, pa, yb, pb = (x.to_numpy() for x in (a["label"], a["prediction"], b["label"], b["prediction"]))
    diffs: list[float] = []
    while len(diffs) < 400:
        ia, ib = rng.integers(0, len(ya), len(ya)), rng.integers(0, len(yb), len(yb))
        if len(set(ya[ia])) < 2 or len(set(yb[ib])) < 2:
            continue
        diffs.append(sk.roc_auc_score(yb[ib], pb[ib]) - sk.roc_auc_score(ya[ia], pa[ia]))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-12)
    table = run_keel(["ab", "report", MODEL, "--window", "1h"], s)
    assert table.returncode == 0 and "B - A =" in table.stdout, table.stderr


def test_promote_with_the_ab_gate_decides_by_the_report_and_records_it(ab_traffic: dict[str, Any],
                                                                      controller: Settings) -> None:
    from keel.monitoring import ab
    from keel.registry.client import Registry

    s = controller
    report = ab.report(s, MODEL, "1h", versions=("1", "2"))
    passes = ab.gate_passes(report, tolerance=0.0)  # fraud_ab is in no spec: the gate's tolerance is 0
    out = run_keel(["promote", MODEL, "--ab"], s)
    if passes:
        assert out.returncode == 0 and "v2 is now champion" in out.stdout, out.stderr
    else:
        assert out.returncode == 3 and "refused by the A/B test on real outcomes" in out.stderr, out.stderr
        assert Registry(s).resolve(MODEL, "champion").version == "1"
    last = [x for x in s.audit().records(MODEL) if x.action in ("promote", "promote-refused")][-1]
    assert last.action == ("promote" if passes else "promote-refused")
    assert last.details["ab_metric"] == "roc_auc" and last.details["ab_labelled_b"] == report.b.labelled_rows
    print(f"A/B: {report.verdict}, B - A {report.diff:+.4f} [{report.ci_low:+.4f}, {report.ci_high:+.4f}]")
