from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from examples.fraud.fraud_data import GenSpec, generate, write

from keel.errors import KeelError

END = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = generate(GenSpec(transactions=2000, customers=100, merchants=10, end=END, seed=1))
    b = generate(GenSpec(transactions=2000, customers=100, merchants=10, end=END, seed=1))
    c = generate(GenSpec(transactions=2000, customers=100, merchants=10, end=END, seed=2))
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["transactions"]["amount"].equals(c["transactions"]["amount"])


def test_tables_cover_the_window_and_labels_are_learnable() -> None:
    spec = GenSpec(transactions=50_000, customers=1000, merchants=50, end=END)
    t = generate(spec)
    tx = t["transactions"]
    assert len(tx) == 50_000
    assert tx["event_timestamp"].min() >= pd.Timestamp(spec.start) and tx["event_timestamp"].max() < pd.Timestamp(END)
    assert 0.01 < tx["is_fraud"].mean() < 0.2
    assert (t["customer_spend"]["created"] > t["customer_spend"]["event_timestamp"]).all()
    # fraud is more likely at risky merchants: the features carry signal
    merchant = t["merchant_risk"].groupby("merchant_id")["merchant_fraud_rate_30d"].mean()
    rate = tx.groupby("merchant_id")["is_fraud"].mean()
    assert merchant.corr(rate) > 0.3


def test_a_million_rows_are_possible() -> None:
    t = generate(GenSpec(transactions=1_000_000, customers=20_000, merchants=500, end=END))
    assert len(t["transactions"]) == 1_000_000


def test_drift_scales_only_the_named_feature_after_the_cut() -> None:
    base = GenSpec(transactions=5000, customers=200, merchants=20, end=END)
    drifted = GenSpec(transactions=5000, customers=200, merchants=20, end=END,
                      drift={"amount_mean_24h": 3.0, "amount": 2.0}, drift_start=0.5)
    a, b = generate(base), generate(drifted)
    cut = pd.Timestamp(base.start + (base.end - base.start) * 0.5)
    sa, sb = a["customer_spend"], b["customer_spend"]
    late = sa["event_timestamp"] >= cut
    assert (sb.loc[late, "amount_mean_24h"] == sa.loc[late, "amount_mean_24h"] * 3.0).all()
    assert (sb.loc[~late, "amount_mean_24h"] == sa.loc[~late, "amount_mean_24h"]).all()
    pd.testing.assert_series_equal(sa["amount_mean_7d"], sb["amount_mean_7d"])
    late_tx = a["transactions"]["event_timestamp"] >= cut
    assert (b["transactions"].loc[late_tx, "amount"] == a["transactions"].loc[late_tx, "amount"] * 2.0).all()


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"drift": {"nope": 2.0}}, "unknown feature 'nope' in drift; valid choices: account_age_days"),
        ({"transactions": 0}, "invalid transactions=0"),
        ({"drift_start": 1.5}, "invalid drift_start=1.5"),
    ],
)
def test_bad_spec_is_rejected_with_the_bad_value(kwargs: dict, msg: str) -> None:
    with pytest.raises(KeelError, match=msg):
        GenSpec(**kwargs)


def test_parquet_timestamps_are_microseconds(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    paths = write(generate(GenSpec(transactions=100, customers=10, merchants=2, end=END)), tmp_path)
    schema = pq.read_schema(paths["customer_spend"])
    assert str(schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
