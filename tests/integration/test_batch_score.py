"""Batch scoring against the real stack: point-in-time features from the offline store, the serving
runtime's own model code, and the same score the online path gives for the same entity and instant."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keel.config import Settings
from keel.errors import KeelError
from tests.conftest import run_keel
from tests.integration.conftest import DATA_END


def _fresh_entities(feature_data: dict[str, Path], n: int) -> pd.DataFrame:
    """Transactions re-timed to DATA_END, for customers and merchants whose latest feature rows are
    within their views' TTLs then: the point-in-time value is the latest one, as the online store holds."""
    tx = pd.read_parquet(feature_data["transactions"])
    spend = pd.read_parquet(feature_data["customer_spend"])
    risk = pd.read_parquet(feature_data["merchant_risk"])
    end = pd.Timestamp(DATA_END)
    fresh_c = set(spend.loc[spend["event_timestamp"] > end - timedelta(hours=20), "customer_id"])
    fresh_m = set(risk.loc[risk["event_timestamp"] > end - timedelta(days=6), "merchant_id"])
    rows = tx[tx["customer_id"].isin(fresh_c) & tx["merchant_id"].isin(fresh_m)]
    rows = rows.drop_duplicates(["customer_id", "merchant_id"]).head(n)
    assert len(rows) == n, f"only {len(rows)} fresh entity pairs"
    return rows[["customer_id", "merchant_id", "amount"]].assign(event_timestamp=end).reset_index(drop=True)


def test_batch_scores_equal_the_online_path(served_model: dict[str, str], feature_data: dict[str, Path],
                                            stack_settings: Settings) -> None:
    from keel import batch
    from keel.serving.core import Predictor

    rows = _fresh_entities(feature_data, 40)
    shuffled = rows.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order is the caller's
    result = batch.score(stack_settings, served_model["name"], shuffled, chunk_rows=16)  # 3 chunks
    out = result.frame
    assert result.version == served_model["champion"]
    assert list(out.columns[:4]) == ["customer_id", "merchant_id", "amount", "event_timestamp"]
    assert out[["customer_id", "merchant_id"]].equals(shuffled[["customer_id", "merchant_id"]])
    assert not out["degraded"].any()
    assert out["request_id"].is_unique and set(out["version"]) == {served_model["champion"]}

    online = Predictor.from_registry(stack_settings, served_model["name"])
    answer = online.predict(shuffled[["customer_id", "merchant_id", "amount"]].to_dict(orient="records"))
    assert not any(answer.degraded)
    np.testing.assert_allclose(out["score"].to_numpy(dtype="float64"), np.asarray(answer.scores), rtol=0, atol=1e-6)
    # as of an earlier instant the features (and so most scores) are the point-in-time ones, not the latest
    earlier = batch.score(stack_settings, served_model["name"], shuffled.assign(
        event_timestamp=pd.Timestamp(DATA_END) - timedelta(days=3)))
    assert (np.abs(earlier.frame["score"].to_numpy(dtype="float64") - np.asarray(answer.scores)) > 1e-6).mean() > 0.5


def test_the_cli_scores_a_file_and_refuses_bad_input_up_front(served_model: dict[str, str],
                                                              feature_data: dict[str, Path],
                                                              stack_settings: Settings, tmp_path: Path) -> None:
    rows = _fresh_entities(feature_data, 10)
    src, dst = tmp_path / "rows.parquet", tmp_path / "scored.csv"
    rows.to_parquet(src)
    ok = run_keel(["batch-score", served_model["name"], "--entities", str(src), "--out", str(dst)], stack_settings)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"scored 10 rows with {served_model['name']} v{served_model['champion']} (0 degraded)" in ok.stdout
    scored = pd.read_csv(dst)
    assert len(scored) == 10 and scored["score"].between(0, 1).all()

    rows.drop(columns=["amount"]).to_parquet(tmp_path / "no_amount.parquet")
    for args, needle in [
        (["--entities", str(tmp_path / "no_amount.parquet"), "--out", str(dst)],
         "entities lack column(s) amount needed to score fraud_serve"),
        (["--entities", str(src), "--out", str(tmp_path / "scored.json")], "expected a path ending in .parquet"),
        (["--entities", str(tmp_path / "nosuch.parquet"), "--out", str(dst)], "no such file"),
        (["--entities", str(src), "--out", str(dst), "--alias", "nosuch"], "unknown alias 'nosuch'"),
    ]:
        proc = run_keel(["batch-score", served_model["name"], *args], stack_settings)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.startswith("keel: error: ") and needle in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0


def test_sdk_batch_score_needs_the_timestamp(served_model: dict[str, str], feature_data: dict[str, Path],
                                             stack_settings: Settings) -> None:
    from keel.client import Client

    rows = _fresh_entities(feature_data, 3).drop(columns=["event_timestamp"])
    with pytest.raises(KeelError, match=r"entities lack column\(s\) event_timestamp"):
        Client(stack_settings).batch_score(served_model["name"], rows)
