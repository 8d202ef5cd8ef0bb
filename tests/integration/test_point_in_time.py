"""Point-in-time correctness: Feast (DuckDB offline store, as keel drives it) equals a brute-force
reference row for row, on random data built to contain ties, TTL expiry and late-arriving rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keel.config import Settings
from keel.features import store, training
from keel.features.datagen import MERCHANT_FEATURES, PROFILE_FEATURES, SPEND_FEATURES, write
from keel.stack import Stack
from tests.integration.pit_reference import brute_force

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
HOUR = 3600


def _ts(hours: np.ndarray) -> pd.Series:
    base = pd.Timestamp(T0).as_unit("us")
    return pd.Series(base + pd.to_timedelta(hours.astype("int64") * HOUR, unit="s"), dtype="datetime64[us, UTC]")


def _table(rng: np.random.Generator, key: str, n_keys: int, rows: int, span_h: int, features: tuple[str, ...],
           ints: set[str]) -> pd.DataFrame:
    keys = rng.integers(0, n_keys, rows)
    hours = rng.integers(0, span_h, rows)
    # ties: a fifth of rows repeat another row's key and event time, told apart only by `created`
    dup = rng.random(rows) < 0.2
    src = rng.integers(0, rows, rows)
    keys = np.where(dup, keys[src], keys)
    hours = np.where(dup, hours[src], hours)
    # late arrivals: most rows land within minutes, a tenth land a day or more after their event time
    lag_s = np.where(rng.random(rows) < 0.1, rng.integers(24 * HOUR, 72 * HOUR, rows), rng.integers(1, 600, rows))
    ev = _ts(hours)
    # a per-row microsecond offset keeps `created` unique: among full ties Feast's order is undefined
    created = ev + pd.to_timedelta(lag_s, unit="s") + pd.to_timedelta(np.arange(rows), unit="us")
    df = pd.DataFrame({key: keys.astype("int64"), "event_timestamp": ev, "created": created})
    for f in features:
        df[f] = rng.integers(0, 1000, rows).astype("int64") if f in ints else rng.normal(50, 20, rows).round(3)
    return df


@pytest.fixture(scope="module")
def pit_settings(stack: Stack, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # own state directory (own Feast registry and data), the session's Redis
    home = tmp_path_factory.mktemp("pit") / "keel"
    return stack_settings.model_copy(update={"home": home})


@pytest.mark.parametrize("seed", [11, 12])
def test_training_set_equals_brute_force(pit_settings: Settings, seed: int) -> None:
    rng = np.random.default_rng(seed)
    span = 24 * 20
    int_cols = {"txn_count_1h", "txn_count_24h", "account_age_days", "chargebacks_90d", "merchant_txn_count_24h"}
    spend = _table(rng, "customer_id", 12, 600, span, SPEND_FEATURES, int_cols)
    profile = _table(rng, "customer_id", 12, 40, span, PROFILE_FEATURES, int_cols)
    merchant = _table(rng, "merchant_id", 5, 200, span, MERCHANT_FEATURES, int_cols)

    n = 1500
    ev_hours = rng.integers(0, span + 24 * 3, n)  # runs past the data: TTL expiry must produce nulls
    events = pd.DataFrame({"customer_id": rng.integers(0, 14, n).astype("int64"),   # 12, 13: unknown keys
                           "merchant_id": rng.integers(0, 6, n).astype("int64"),
                           "amount": rng.uniform(1, 500, n).round(2), "event_timestamp": _ts(ev_hours)})
    # events exactly at a feature row's event time, and exactly at its TTL boundary (both inclusive)
    pick = spend.sample(100, random_state=seed)
    exact = pd.DataFrame({"customer_id": pick["customer_id"].to_numpy(), "merchant_id": 0, "amount": 10.0,
                          "event_timestamp": pick["event_timestamp"].to_numpy()})
    edge = exact.assign(event_timestamp=exact["event_timestamp"] + pd.Timedelta(days=1))
    events = pd.concat([events, exact, edge, events.head(50)], ignore_index=True)  # and duplicate events
    events["transaction_id"] = np.arange(len(events), dtype="int64")
    events["is_fraud"] = rng.integers(0, 2, len(events)).astype("int64")

    write({"customer_spend": spend, "customer_profile": profile, "merchant_risk": merchant},
          pit_settings.data_dir)
    store.apply(pit_settings)
    got = training.build(pit_settings, "fraud_model_v1", events).frame

    expected = brute_force(events, {
        "customer_spend": (spend, "customer_id", timedelta(days=1), list(SPEND_FEATURES)),
        "customer_profile": (profile, "customer_id", timedelta(days=30), list(PROFILE_FEATURES)),
        "merchant_risk": (merchant, "merchant_id", timedelta(days=7), list(MERCHANT_FEATURES)),
    })
    got = got.sort_values("transaction_id").reset_index(drop=True)
    expected = expected.sort_values("transaction_id").reset_index(drop=True)
    assert len(got) == len(expected) == len(events)
    cols = [*SPEND_FEATURES, *PROFILE_FEATURES, *MERCHANT_FEATURES]
    # the data really exercises every case
    assert expected[list(SPEND_FEATURES)].isna().any(axis=1).sum() > 50
    assert expected[list(SPEND_FEATURES)].notna().all(axis=1).sum() > 500
    mismatches = {c: int((~np.isclose(got[c].astype("float64"), expected[c].astype("float64"),
                                      rtol=0, atol=1e-9, equal_nan=True)).sum()) for c in cols}
    assert mismatches == dict.fromkeys(cols, 0)


def test_late_rows_do_not_leak_into_earlier_events(pit_settings: Settings, tmp_path: Path) -> None:
    """One customer: a value known at 10:00, a correction for 11:00 that only arrives at 15:00."""
    at = lambda h: pd.Timestamp(T0).as_unit("us") + pd.Timedelta(hours=h)  # noqa: E731
    spend = pd.DataFrame({"customer_id": [1, 1], "event_timestamp": [at(10), at(11)],
                          "created": [at(10) + pd.Timedelta(seconds=1), at(15)]})
    for f in SPEND_FEATURES:
        spend[f] = [1, 2]
    profile = spend[["customer_id", "event_timestamp", "created"]].head(1).assign(
        account_age_days=1, credit_limit=1.0, chargebacks_90d=0)
    merchant = pd.DataFrame({"merchant_id": [1], "event_timestamp": [at(0)], "created": [at(0)],
                             "merchant_fraud_rate_30d": [0.1], "merchant_txn_count_24h": [1],
                             "merchant_avg_amount_7d": [1.0]})
    write({"customer_spend": spend, "customer_profile": profile, "merchant_risk": merchant}, pit_settings.data_dir)
    store.apply(pit_settings)
    events = pd.DataFrame({"customer_id": [1, 1], "merchant_id": [1, 1], "amount": [5.0, 5.0],
                           "event_timestamp": [at(12), at(16)], "is_fraud": [0, 1]})
    got = training.build(pit_settings, "fraud_model_v1", events, out_dir=tmp_path).frame
    assert got.sort_values("event_timestamp")["amount_mean_24h"].tolist() == [1, 2]
