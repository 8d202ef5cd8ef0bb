"""Sticky A/B assignment and the per-variant comparison, as pure logic: 10,000 requests through the
router (the same entity always meets the same variant, the split within 3 % of the weight), and the
report against a brute-force computation."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from keel.monitoring.ab import compare, gate_passes
from keel.serving.router import Router, bucket
from tests.unit.test_serving_logic import predictor


def test_the_same_entity_always_meets_the_same_variant_and_the_split_follows_the_weight() -> None:
    a, b = predictor("1", 0.1, max_batch=1000), predictor("2", 0.9, max_batch=1000)
    router = Router(a, b, "canary", 0.3, seed=1, sticky_key="customer_id")
    customers = list(range(5_000)) * 2
    random.Random(3).shuffle(customers)
    seen: dict[int, set[str]] = {}
    for c in customers:  # 10,000 requests, each customer twice, in random order
        seen.setdefault(c, set()).add(router.predict([{"customer_id": c, "amount": 1.0}]).version)
    assert all(len(v) == 1 for v in seen.values())
    share = sum(1 for c in customers if seen[c] == {"2"}) / len(customers)
    assert abs(share - 0.3) <= 0.03, share
    # batched requests (the Ray runtime) route the same way, one request at a time
    out = router.predict_many([[{"customer_id": c, "amount": 1.0}] for c in range(200)])
    assert all(r.version == next(iter(seen[c])) for c, r in zip(range(200), out, strict=True))
    # the assignment is a keyed hash of the model name and the value, the same in every process
    assert all((seen[c] == {"2"}) == (bucket("m", c) < 0.3) for c in range(5_000))
    assert bucket("m", 42) == bucket("m", "42") != bucket("other", 42)


def test_without_the_key_a_request_falls_back_to_the_coin_flip() -> None:
    a, b = predictor("1", 0.1), predictor("2", 0.9)
    router = Router(a, b, "canary", 0.5, seed=1, sticky_key="merchant_id")
    versions = {router.predict([{"customer_id": 1, "amount": 1.0}]).version for _ in range(60)}
    assert versions == {"1", "2"}


def _joined(n_a: int, n_b: int, auc_shift: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for role, version, n, shift in (("primary", "1", n_a, 0.0), ("canary", "2", n_b, auc_shift)):
        y = (rng.random(n) < 0.3).astype(float)
        p = np.clip(0.3 + (y - 0.3) * (0.3 + shift) + rng.normal(0, 0.2, n), 0, 1)
        at = pd.Timestamp("2026-12-01", tz="UTC") + pd.to_timedelta(np.linspace(0, 3600, n), unit="s")
        frames.append(pd.DataFrame({"version": version, "role": role, "prediction": p, "label": y, "timestamp": at}))
    out = pd.concat(frames, ignore_index=True)
    out.loc[out.index % 7 == 0, "label"] = np.nan  # no outcome yet for some rows
    return out


def test_the_report_matches_a_brute_force_computation() -> None:
    joined = _joined(1200, 600, 0.2)
    r = compare("m", joined, "binary", "roc_auc", min_labels=100, n_boot=300, seed=4)
    a = joined[(joined["role"] == "primary") & joined["label"].notna()]
    b = joined[(joined["role"] == "canary") & joined["label"].notna()]
    auc_a, auc_b = sk.roc_auc_score(a["label"], a["prediction"]), sk.roc_auc_score(b["label"], b["prediction"])
    assert (r.a.version, r.b.version, r.a.labelled_rows, r.b.labelled_rows) == ("1", "2", len(a), len(b))
    assert (r.a.value, r.b.value) == (auc_a, auc_b) and r.diff == auc_b - auc_a
    rng = np.random.default_rng(4)  # the bootstrap, written out
    diffs = []
    ya, pa, yb, pb = (a["label"].to_numpy(), a["prediction"].to_numpy(), b["label"].to_numpy(),
                      b["prediction"].to_numpy())
    while len(diffs) < 300:
        ia, ib = rng.integers(0, len(ya), len(ya)), rng.integers(0, len(yb), len(yb))
        diffs.append(sk.roc_auc_score(yb[ib], pb[ib]) - sk.roc_auc_score(ya[ia], pa[ia]))
    assert (r.ci_low, r.ci_high) == tuple(np.percentile(diffs, [2.5, 97.5]))
    assert r.verdict == "B better" and r.ci_low > 0 and gate_passes(r, tolerance=0.0)


@pytest.mark.parametrize(("shift", "verdict", "passes"),
                         [(-0.25, "B worse", False), (0.0, "no difference shown", True)])
def test_verdicts_and_the_gate(shift: float, verdict: str, passes: bool) -> None:
    r = compare("m", _joined(1500, 1500, shift, seed=2), "binary", "roc_auc", min_labels=100, n_boot=300)
    assert r.verdict == verdict
    assert gate_passes(r, tolerance=0.05) is passes


def test_too_few_outcomes_give_no_verdict_and_no_pass() -> None:
    r = compare("m", _joined(100, 50, 0.2), "binary", "roc_auc", min_labels=100)
    assert r.verdict == "not enough outcomes" and r.diff is None and not gate_passes(r, 1.0)
