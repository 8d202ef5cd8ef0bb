"""Feast through keel on real Redis: apply, materialize, online = offline, training-set snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from examples.fraud.fraud_data import MERCHANT_FEATURES, SPEND_FEATURES

from keel.config import Settings
from keel.errors import NotFoundError
from keel.features import store, training
from tests.conftest import build_fraud, run_keel
from tests.integration.conftest import DATA_END


def test_apply_registers_the_repo(feature_data: dict[str, Path], stack_settings: Settings) -> None:
    names = store.apply(stack_settings)  # idempotent: a second apply changes nothing
    assert {"customer_spend", "customer_profile", "merchant_risk", "transaction_ratios",
            "fraud_model_v1", "fraud_model_lite"} <= set(names)


def test_online_values_equal_latest_offline_rows(feature_data: dict[str, Path], stack_settings: Settings) -> None:
    """What serving will read from Redis is exactly the latest unexpired row of the offline data."""
    fs = store.open_store(stack_settings)
    spend = pd.read_parquet(feature_data["customer_spend"])
    merchant = pd.read_parquet(feature_data["merchant_risk"])
    fresh = spend[spend["event_timestamp"] > pd.Timestamp(DATA_END) - pd.Timedelta(days=1)]
    latest = fresh.sort_values(["event_timestamp", "created"]).groupby("customer_id").tail(1).set_index("customer_id")
    m_latest = merchant.sort_values(["event_timestamp", "created"]).groupby("merchant_id").tail(1).set_index(
        "merchant_id")
    customers = latest.sample(40, random_state=0).index.tolist()
    rows = [{"customer_id": int(c), "merchant_id": int(c) % 60, "amount": 42.0} for c in customers]
    online = pd.DataFrame(fs.get_online_features(features=store.feature_service(fs, "fraud_model_v1"),
                                                 entity_rows=rows).to_dict())
    for f in SPEND_FEATURES:
        np.testing.assert_allclose(online[f].astype(float), latest.loc[customers, f].astype(float), err_msg=f)
    for f in MERCHANT_FEATURES:
        np.testing.assert_allclose(online[f].astype(float),
                                   m_latest.loc[online["merchant_id"], f].astype(float), err_msg=f)
    # the on-demand view is computed from the same values
    np.testing.assert_allclose(online["amount_vs_customer_mean_24h"],
                               42.0 / (latest.loc[customers, "amount_mean_24h"].to_numpy() + 1.0))


def test_materialize_is_incremental(feature_data: dict[str, Path], stack_settings: Settings) -> None:
    fs = store.open_store(stack_settings)
    before = {fv.name: fv.most_recent_end_time for fv in fs.list_feature_views()}
    assert all(t is not None for t in before.values())
    end = store.materialize(stack_settings, end=DATA_END + pd.Timedelta(hours=2))
    after = {fv.name: fv.most_recent_end_time for fv in store.open_store(stack_settings).list_feature_views()}
    assert all(after[n] > before[n] for n in before) and all(t == end for t in after.values())


def test_training_set_snapshot_is_content_addressed(training_set: training.TrainingSet,
                                                    feature_data: dict[str, Path], stack_settings: Settings) -> None:
    ts = training_set
    assert ts.snapshot.exists() and ts.snapshot_hash in ts.snapshot.name
    assert len(ts.frame) == 20_000 and ts.label == "is_fraud"
    assert ts.features[:3] == ["txn_count_1h", "amount_sum_1h", "txn_count_24h"]
    assert pd.read_parquet(ts.snapshot).shape == ts.frame.shape
    shuffled = pd.read_parquet(feature_data["transactions"]).sample(frac=1.0, random_state=3)
    again = build_fraud(stack_settings, "fraud_model_v1", shuffled)
    assert again.snapshot_hash == ts.snapshot_hash
    fewer = build_fraud(stack_settings, "fraud_model_v1", shuffled.head(1000))
    assert fewer.snapshot_hash != ts.snapshot_hash
    assert again.definition_hash == ts.definition_hash
    lite = build_fraud(stack_settings, "fraud_model_lite", shuffled.head(1000))
    assert lite.definition_hash != ts.definition_hash


def test_unknown_feature_service_lists_the_valid_ones(feature_data: dict[str, Path],
                                                      stack_settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="unknown feature service 'fraud_v9'; valid choices: fraud_model_lite, "
                                            "fraud_model_v1"):
        build_fraud(stack_settings, "fraud_v9", pd.read_parquet(feature_data["transactions"]).head(10))
    proc = run_keel(["features", "training-set", "--feature-service", "fraud_v9", "--labels",
                     str(feature_data["transactions"]), "--label", "is_fraud"], stack_settings)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "unknown feature service 'fraud_v9'" in proc.stderr and "fraud_model_v1" in proc.stderr


def test_labels_missing_a_needed_column(feature_data: dict[str, Path], stack_settings: Settings) -> None:
    events = pd.read_parquet(feature_data["transactions"]).head(10).drop(columns=["amount"])
    with pytest.raises(Exception, match="lack column\\(s\\) amount"):
        build_fraud(stack_settings, "fraud_model_v1", events)


def test_apply_of_a_second_repo_in_one_process_reads_its_own_definitions(
        feature_data: dict[str, Path], stack_settings: Settings, tmp_path: Path) -> None:
    """Every Feast repo has a definitions.py: applying another repo after keel's must not reuse the
    module Python cached for the first one (the controller and the benchmarks apply several)."""
    repo = tmp_path / "other_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        (stack_settings.repo / "feature_store.yaml").read_text().replace("keel_fraud", "other"))
    (repo / "definitions.py").write_text(
        "from datetime import timedelta\n"
        "from feast import Entity, FeatureView, Field, FileSource\n"
        "from feast.types import Float64\n"
        "from feast.value_type import ValueType\n"
        "thing = Entity(name='thing', join_keys=['thing_id'], value_type=ValueType.INT64)\n"
        f"other_fv = FeatureView(name='other_fv', entities=[thing], ttl=timedelta(days=1), online=False,\n"
        "    schema=[Field(name='x', dtype=Float64)],\n"
        f"    source=FileSource(path={str(tmp_path / 'x.parquet')!r}, timestamp_field='ts'))\n")
    names = store.apply(stack_settings.model_copy(update={"feature_repo": repo, "home": tmp_path / "home"}))
    assert names == ["other_fv"]
