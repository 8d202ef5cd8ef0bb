"""The outcome store's pure logic on real parquet files: validation names the row and field, outcomes
resolve by request id or by entity + time, duplicates count once, corrections win, nothing is half-stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from keel.monitoring.outcomes import MAX_ROWS, FeedbackError, OutcomeStore, check_label, read
from keel.serving.predlog import PredictionLog

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _log(tmp_path: Path) -> str:
    """Three requests of 'fraud': r1 (one row, customer 1), r2 (two rows, customers 2 and 3), r3 (customer 1,
    ten minutes after r1); r2 also scored in shadow by v2."""
    uri = str(tmp_path / "predictions")
    log = PredictionLog(uri)
    rows = [("r1", 0, 1, 0), ("r2", 0, 2, 60), ("r2", 1, 3, 60), ("r3", 0, 1, 600)]
    log.add([{"request_id": r, "row": k, "model": "fraud", "version": "1", "role": "primary",
              "timestamp": (T0 + timedelta(seconds=s)).isoformat(), "customer_id": c, "prediction": 0.2,
              "degraded": False} for r, k, c, s in rows])
    log.add([{"request_id": "r2", "row": 0, "model": "fraud", "version": "2", "role": "shadow",
              "timestamp": (T0 + timedelta(seconds=61)).isoformat(), "customer_id": 2, "prediction": 0.3,
              "degraded": False}])
    log.flush()
    return uri


@pytest.fixture
def store(tmp_path: Path) -> OutcomeStore:
    return OutcomeStore(str(tmp_path / "outcomes"), _log(tmp_path))


def _record(store: OutcomeStore, rows: list[dict], **kw: object):
    return store.record("fraud", "binary", rows, ["customer_id"], now=T0 + timedelta(hours=1), **kw)


def test_by_request_id_and_by_entity_and_time_are_one_outcome(store: OutcomeStore) -> None:
    got = _record(store, [{"request_id": "r1", "label": 1}, {"request_id": "r2", "row": 1, "label": 0}])
    assert (got.accepted, got.duplicates, got.corrected) == (2, 0, 0)
    # customer 1 at T0+30s: nearest logged prediction is r1 (30 s away; r3 is 570 s away): the same outcome
    again = _record(store, [{"customer_id": 1, "event_timestamp": (T0 + timedelta(seconds=30)).isoformat(),
                             "label": 1}])
    assert (again.accepted, again.duplicates) == (0, 1)
    # customer 1 at T0+590s resolves to r3: a new outcome
    third = _record(store, [{"customer_id": 1, "event_timestamp": (T0 + timedelta(seconds=590)).timestamp(),
                             "label": True}])
    assert third.accepted == 1
    df = read(store.uri, "fraud")
    assert sorted(df["outcome_id"]) == ["r1:0", "r2:1", "r3:0"]
    assert set(df["customer_id"]) == {1, 3} and set(df["version"]) == {"1"}
    assert df.set_index("outcome_id").loc["r3:0", "source"] == "entity"


def test_a_different_label_is_a_correction_that_wins(store: OutcomeStore) -> None:
    _record(store, [{"request_id": "r1", "label": 0}])
    fixed = _record(store, [{"request_id": "r1", "label": 1}, {"request_id": "r1", "label": 1}])
    assert (fixed.accepted, fixed.duplicates, fixed.corrected) == (0, 1, 1)
    df = read(store.uri, "fraud")
    assert df["label"].tolist() == [1.0]
    # a fresh store (another controller process) knows what is stored: the same outcome is still a duplicate
    other = OutcomeStore(store.uri, store.index.uri)
    assert _record(other, [{"request_id": "r1", "label": 1}]).duplicates == 1


@pytest.mark.parametrize(("row", "problem"), [
    ({"request_id": "nope", "label": 1}, "outcomes[1].request_id: unknown request id 'nope'"),
    ({"request_id": "r2", "row": 5, "label": 1}, "outcomes[1].row: request 'r2' has rows 0..1, not 5"),
    ({"request_id": "r1", "label": "yes"}, "outcomes[1].label: expected 0 or 1 (or true/false) for a binary model "
                                           "(got 'yes')"),
    ({"request_id": "r1", "label": 2}, "outcomes[1].label: expected 0 or 1"),
    ({"request_id": "r1"}, "outcomes[1].label: missing"),
    ({"request_id": 7, "label": 1}, "outcomes[1].request_id: expected the answer's request_id"),
    ({"request_id": "r1", "row": -1, "label": 1}, "outcomes[1].row: expected the row's index"),
    ({"request_id": "r1", "label": 1, "score": 3}, "outcomes[1].score: unknown field; valid fields: request_id, row,"),
    ({"customer_id": 1, "label": 1}, "outcomes[1].event_timestamp: missing; an outcome names its prediction by "
                                     "request_id or by customer_id + event_timestamp"),
    ({"customer_id": 1, "event_timestamp": "soon", "label": 1}, "outcomes[1].event_timestamp: expected an ISO 8601"),
    ({"customer_id": 9, "event_timestamp": T0.isoformat(), "label": 1},
     "outcomes[1]: no logged prediction of 'fraud' for customer_id=9 within 300s of"),
    ({"customer_id": 1, "event_timestamp": (T0 - timedelta(hours=1)).isoformat(), "label": 1},
     "outcomes[1]: no logged prediction of 'fraud' for customer_id=1 within 300s"),
    ("r1", "outcomes[1]: expected an object with label and request_id or customer_id + event_timestamp"),
])
def test_a_bad_row_is_named_and_nothing_of_its_batch_is_stored(store: OutcomeStore, row: object,
                                                                 problem: str) -> None:
    with pytest.raises(FeedbackError) as err:
        _record(store, [{"request_id": "r1", "label": 1}, row])
    assert problem in str(err.value) and "nothing of this batch was stored" in str(err.value)
    assert err.value.status == 422
    assert read(store.uri, "fraud").empty


def test_batch_bounds(store: OutcomeStore) -> None:
    with pytest.raises(FeedbackError) as err:
        _record(store, [{"request_id": "r1", "label": 1}] * (MAX_ROWS + 1))
    assert err.value.status == 413 and f"at most {MAX_ROWS}" in str(err.value)
    for bad in ([], {"request_id": "r1"}, None):
        with pytest.raises(FeedbackError) as err:
            _record(store, bad)  # type: ignore[arg-type]
        assert err.value.status == 400


def test_labels_per_task() -> None:
    assert check_label("regression", 3, None) == 3.0
    assert check_label("multiclass", 2.0, ["1", "2", "3"]) == "2"
    assert check_label("multiclass", "fast", ["fast", "slow"]) == "fast"
    for task, value, classes in (("regression", float("nan"), None), ("regression", True, None),
                                 ("multiclass", "medium", ["fast", "slow"]), ("binary", 0.5, None)):
        with pytest.raises(ValueError):
            check_label(task, value, classes)


def test_many_outcomes_by_entity_resolve_in_one_pass(tmp_path: Path) -> None:
    """5,000 entities' predictions, 5,000 outcomes by entity + time: resolved per entity group, not by a
    scan per outcome."""
    uri = str(tmp_path / "predictions")
    log = PredictionLog(uri)
    log.add([{"request_id": f"q{i}", "row": 0, "model": "m", "version": "1", "role": "primary",
              "timestamp": (T0 + timedelta(seconds=i)).isoformat(), "customer_id": i, "prediction": 0.5,
              "degraded": False} for i in range(5000)])
    log.flush()
    store = OutcomeStore(str(tmp_path / "outcomes"), uri)
    outcomes = [{"customer_id": i, "event_timestamp": (T0 + timedelta(seconds=i + 2)).isoformat(), "label": i % 2}
                for i in range(5000)]
    got = store.record("m", "binary", outcomes, ["customer_id"], now=T0 + timedelta(hours=2))
    assert got.accepted == 5000
    df = read(store.uri, "m")
    assert (df["request_id"] == "q" + df["customer_id"].astype(str)).all()
    assert pd.api.types.is_datetime64_any_dtype(df["event_timestamp"])
