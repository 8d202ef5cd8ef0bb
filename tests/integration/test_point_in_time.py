"""Point-in-time correctness: both engines of ``training.build`` -- keel's (``keel.features.pit``) and
Feast's DuckDB offline store -- equal a brute-force reference row for row, on random data built to
contain ties, TTL expiry and late-arriving rows, and equal each other exactly (columns, dtypes, values,
hash), there and on the demo's generated data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from examples.fraud.fraud_data import MERCHANT_FEATURES, PROFILE_FEATURES, SPEND_FEATURES, write

from keel.config import Settings
from keel.errors import KeelError
from keel.features import pit, store, training
from keel.stack import Stack
from tests.conftest import build_fraud
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


VIEWS = {"customer_spend": ("customer_id", timedelta(days=1), SPEND_FEATURES),
         "customer_profile": ("customer_id", timedelta(days=30), PROFILE_FEATURES),
         "merchant_risk": ("merchant_id", timedelta(days=7), MERCHANT_FEATURES)}
FEATURES = [*SPEND_FEATURES, *PROFILE_FEATURES, *MERCHANT_FEATURES]
_CASES: dict[int, tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]] = {}


def _case(seed: int) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """(feature tables, labelled events, brute-force answer) for a seed; computed once per session."""
    if seed in _CASES:
        return _CASES[seed]
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
    # and exactly when a row arrives (created == event time: inclusive too)
    arrive = exact.assign(event_timestamp=pick["created"].to_numpy())
    events = pd.concat([events, exact, edge, arrive, events.head(50)], ignore_index=True)  # and duplicate events
    events["transaction_id"] = np.arange(len(events), dtype="int64")
    events["is_fraud"] = rng.integers(0, 2, len(events)).astype("int64")

    tables = {"customer_spend": spend, "customer_profile": profile, "merchant_risk": merchant}
    expected = brute_force(events, {v: (tables[v], key, ttl, list(feats)) for v, (key, ttl, feats) in VIEWS.items()})
    # The data really exercises every case: nulls (expiry, unknown keys), values, and rows that arrived
    # late enough to change answers (ignoring `created` -- a plain ASOF on event time -- gets these wrong).
    assert expected[list(SPEND_FEATURES)].isna().any(axis=1).sum() > 50
    assert expected[list(SPEND_FEATURES)].notna().all(axis=1).sum() > 500
    ignoring_created = brute_force(events, {"customer_spend": (spend.assign(created=spend["event_timestamp"]),
                                                               "customer_id", timedelta(days=1), list(SPEND_FEATURES))})
    changed = ~np.isclose(ignoring_created["amount_mean_24h"], expected["amount_mean_24h"], equal_nan=True)
    assert changed.sum() > 20
    _CASES[seed] = (tables, events, expected)
    return _CASES[seed]


def _mismatches(got: pd.DataFrame, expected: pd.DataFrame) -> dict[str, int]:
    got = got.sort_values("transaction_id").reset_index(drop=True)
    expected = expected.sort_values("transaction_id").reset_index(drop=True)
    assert len(got) == len(expected)
    return {c: int((~np.isclose(got[c].astype("float64"), expected[c].astype("float64"),
                                rtol=0, atol=1e-9, equal_nan=True)).sum()) for c in FEATURES}


@pytest.mark.parametrize("engine", ["keel", "feast"])
@pytest.mark.parametrize("seed", [11, 12])
def test_training_set_equals_brute_force(pit_settings: Settings, seed: int, engine: str) -> None:
    tables, events, expected = _case(seed)
    write(tables, pit_settings.data_dir)
    store.apply(pit_settings)
    ts = build_fraud(pit_settings, "fraud_model_v1", events, engine=engine)
    assert ts.engine == engine  # keel's engine ran, rather than falling back to Feast
    assert len(ts.frame) == len(events)
    assert _mismatches(ts.frame, expected) == dict.fromkeys(FEATURES, 0)


def _assert_same_training_set(a: training.TrainingSet, b: training.TrainingSet) -> None:
    """Identical frames: same columns in the same order, same dtypes, same values, same hash."""
    assert list(a.frame.columns) == list(b.frame.columns)
    assert a.frame.dtypes.to_dict() == b.frame.dtypes.to_dict()
    cols = list(a.frame.columns)
    left = a.frame.sort_values(cols, kind="mergesort").reset_index(drop=True)
    right = b.frame.sort_values(cols, kind="mergesort").reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right, check_exact=True)
    assert a.snapshot_hash == b.snapshot_hash == training.frame_hash(a.frame)
    assert (a.features, a.entity_keys, a.definition_hash) == (b.features, b.entity_keys, b.definition_hash)


@pytest.mark.parametrize("seed", [11, 12])
def test_engines_give_identical_training_sets(pit_settings: Settings, seed: int, tmp_path: Path) -> None:
    tables, events, _ = _case(seed)
    write(tables, pit_settings.data_dir)
    store.apply(pit_settings)
    for service in ("fraud_model_v1", "fraud_model_lite"):
        keel = build_fraud(pit_settings, service, events, out_dir=tmp_path / "keel")
        feast = build_fraud(pit_settings, service, events, out_dir=tmp_path / "feast", engine="feast")
        assert (keel.engine, feast.engine) == ("keel", "feast")
        _assert_same_training_set(keel, feast)
        assert keel.snapshot.name == feast.snapshot.name


def test_engines_agree_on_the_demo_data(training_set: training.TrainingSet, feature_data: dict[str, Path],
                                        stack_settings: Settings, tmp_path: Path) -> None:
    """The session's training set (keel's engine, generated fraud data) is Feast's, to the byte of its hash."""
    events = pd.read_parquet(feature_data["transactions"])
    assert training_set.engine == "keel"
    _assert_same_training_set(training_set, build_fraud(stack_settings, "fraud_model_v1", events,
                                                           out_dir=tmp_path, engine="feast"))
    lite = [build_fraud(stack_settings, "fraud_model_lite", events, out_dir=tmp_path, engine=e)
            for e in ("keel", "feast")]
    _assert_same_training_set(*lite)


def test_unsupported_requests_go_to_feast(pit_settings: Settings) -> None:
    tables, events, _ = _case(11)
    write(tables, pit_settings.data_dir)
    store.apply(pit_settings)
    fs = store.open_store(pit_settings)
    service = store.feature_service(fs, "fraud_model_lite")
    assert pit.is_keel_job(pit.get_historical_features(fs, events, service))
    job = pit.get_historical_features(fs, events, service, filter_by_created_timestamp=False)
    assert not pit.is_keel_job(job) and len(job.to_df()) == len(events)
    with pytest.raises(KeelError, match="unknown engine 'spark'; valid choices: keel, feast"):
        build_fraud(pit_settings, "fraud_model_lite", events, engine="spark")


@pytest.mark.parametrize("engine", ["keel", "feast"])
def test_late_rows_do_not_leak_into_earlier_events(pit_settings: Settings, tmp_path: Path, engine: str) -> None:
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
    ts = build_fraud(pit_settings, "fraud_model_v1", events, out_dir=tmp_path, engine=engine)
    assert ts.engine == engine
    assert ts.frame.sort_values("event_timestamp")["amount_mean_24h"].tolist() == [1, 2]
