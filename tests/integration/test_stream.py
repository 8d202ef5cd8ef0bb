"""Fresh features from events, against real services: a Feast repo of its own (a push source and a stream
feature view with count and sum over the last hour, tests/integration/stream_repo), the session's Redis
as both the stream buffer and the online store, and `keel stream consume` as a real process.

Measured: event -> online freshness (p50/p99, printed). Checked exactly: a consumer killed with SIGKILL
mid-stream and replaced by one of another name loses and repeats nothing; the point-in-time training set
holds, as of each event, the value the online store held; a model served on the view looks the fresh
value up like any feature."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from keel.config import Settings
from tests.conftest import KEEL, ROOT, free_ports, keel_env

SOURCE = "transactions_push"
FEATURES = ["customer_live:txn_count_1h_live", "customer_live:amount_sum_1h_live"]


def _wait(what: str, check: Any, timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return got


class ConsumerProcess:
    """`keel stream consume` in its own process group, stopped (or killed) by the test."""

    def __init__(self, s: Settings, name: str) -> None:
        (self.port,) = free_ports(1)
        self.log = (s.home / f"stream-{name}.log").open("w")
        self.proc = subprocess.Popen(
            [KEEL, "stream", "consume", SOURCE, "--name", name, "--metrics-port", str(self.port), "--batch", "50",
             "--claim-idle-ms", "500"], env=keel_env(s, KEEL_FEATURE_REPO=str(s.repo)), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        _wait("the consumer's metrics endpoint", self.metric_text, 60, 0.5)

    def metric_text(self) -> str:
        assert self.proc.poll() is None, f"consumer exited with {self.proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def events(self) -> float:
        for line in self.metric_text().splitlines():
            if line.startswith("keel_stream_events_total{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def live(stack: Any, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from keel.features import store as fstore

    repo = tmp_path_factory.mktemp("stream") / "repo"
    shutil.copytree(ROOT / "tests" / "integration" / "stream_repo", repo)
    s = stack_settings.model_copy(update={"feature_repo": repo})
    fstore.apply(s)
    consumers: list[ConsumerProcess] = []
    try:
        consumers.append(ConsumerProcess(s, "first"))
        with fstore.in_repo(s):
            online = fstore.open_store(s)
        yield {"settings": s, "consumers": consumers, "store": online}
    finally:
        for c in consumers:
            c.stop(signal.SIGKILL)


def _online(live: dict[str, Any], customers: list[int]) -> pd.DataFrame:
    got = live["store"].get_online_features(FEATURES, [{"customer_id": c} for c in customers]).to_df()
    return got.set_index("customer_id")


def _brute(events: pd.DataFrame, customer: int, at: pd.Timestamp) -> tuple[int, float]:
    """Count and sum of a customer's events in (at - 1h, at]."""
    mine = events[(events["customer_id"] == customer) & (events["event_timestamp"] > at - pd.Timedelta(hours=1))
                  & (events["event_timestamp"] <= at)]
    return len(mine), float(mine["amount"].sum())


def test_an_event_is_online_within_seconds(live: dict[str, Any]) -> None:
    from keel.features import stream

    s = live["settings"]
    latencies = []
    counts: dict[int, int] = {}
    for i in range(40):
        customer = 900_000 + i % 4
        counts[customer] = counts.get(customer, 0) + 1
        t0 = time.perf_counter()
        stream.publish(s, SOURCE, [{"customer_id": customer, "amount": 10.0,
                                     "event_timestamp": pd.Timestamp.now(tz="UTC").isoformat()}])
        _wait("the event online", lambda c=customer: _online(live, [c]).loc[c, "txn_count_1h_live"] == counts[c], 30,
              0.005)
        latencies.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"event -> online freshness over {len(latencies)} events: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 5.0, latencies


def test_a_killed_consumer_loses_and_repeats_nothing(live: dict[str, Any]) -> None:
    from keel.features import stream

    s = live["settings"]
    first: ConsumerProcess = live["consumers"][0]
    now = pd.Timestamp.now(tz="UTC").floor("s")
    rng = np.random.default_rng(7)
    n = 3000
    events = pd.DataFrame({"customer_id": rng.integers(0, 50, n), "amount": np.round(rng.uniform(1, 500, n), 2),
                           "event_timestamp": now - pd.Timedelta(minutes=50) + pd.to_timedelta(
                               np.sort(rng.integers(0, 50 * 60_000, n)), unit="ms")})
    base = first.events()
    ids = stream.publish(s, SOURCE, [{"customer_id": int(r.customer_id), "amount": float(r.amount),
                                      "event_timestamp": r.event_timestamp.isoformat()}
                                     for r in events.itertuples()])
    _wait("the consumer to be mid-stream", lambda: first.events() - base >= 300, 60, 0.01)
    first.stop(signal.SIGKILL)
    left = stream._redis(s).xinfo_groups(stream.stream_key(SOURCE))[0]
    assert left["lag"] + left["pending"] > 0, "the consumer finished before it was killed: nothing was tested"
    second = ConsumerProcess(s, "second")
    live["consumers"].append(second)
    _wait("the backlog to drain", lambda: (g := stream._redis(s).xinfo_groups(stream.stream_key(SOURCE))[0])
          and g["lag"] == 0 and g["pending"] == 0, 120, 0.2)
    offline = pd.read_parquet(s.repo / "data" / "transactions_live.parquet")
    mine = offline[offline["event_id"].isin(ids)]
    assert len(mine) == n and mine["event_id"].is_unique, (len(mine), mine["event_id"].duplicated().sum())
    customers = sorted(events["customer_id"].unique().tolist())
    online = _online(live, customers)
    for c in customers:
        count, total = _brute(events, c, events.loc[events["customer_id"] == c, "event_timestamp"].max())
        assert online.loc[c, "txn_count_1h_live"] == count, c
        assert online.loc[c, "amount_sum_1h_live"] == pytest.approx(total), c
    # every offline row is the aggregate as of its own event
    rows = mine.merge(pd.DataFrame({"event_id": ids, "i": range(n)}), on="event_id")
    for r in rows.sample(200, random_state=1).itertuples():
        before = events.iloc[: r.i + 1]
        assert (r.txn_count_1h_live, r.amount_sum_1h_live) == pytest.approx(
            _brute(before, r.customer_id, events.iloc[r.i]["event_timestamp"])), r.event_id
    live["events"] = events


def test_a_point_in_time_training_set_sees_what_serving_saw(live: dict[str, Any]) -> None:
    from keel.features import training

    s = live["settings"]
    events = live.get("events")
    if events is None:
        pytest.skip("needs the events of test_a_killed_consumer_loses_and_repeats_nothing")
    customers = sorted(events["customer_id"].unique().tolist())[:10]
    now = pd.Timestamp.now(tz="UTC")
    probe = pd.DataFrame({"customer_id": customers * 3,
                          "event_timestamp": [*[events["event_timestamp"].min() + pd.Timedelta(minutes=25)] * 10,
                                              *[events["event_timestamp"].max() - pd.Timedelta(minutes=5)] * 10,
                                              *[now] * 10]})
    ts = training.build(s, "live_v1", probe)
    frame = ts.frame.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)
    for r in frame.itertuples():
        last = events[(events["customer_id"] == r.customer_id) & (events["event_timestamp"] <= r.event_timestamp)]
        want = _brute(events, r.customer_id, last["event_timestamp"].max()) if len(last) else (0, 0.0)
        assert (r.txn_count_1h_live, r.amount_sum_1h_live) == pytest.approx(want), r
    online = _online(live, customers)
    at_now = frame[frame["event_timestamp"] == frame["event_timestamp"].max()].set_index("customer_id")
    for c in customers:  # as of now, the training set holds exactly what the online store serves
        assert at_now.loc[c, "txn_count_1h_live"] == online.loc[c, "txn_count_1h_live"]
        assert at_now.loc[c, "amount_sum_1h_live"] == pytest.approx(online.loc[c, "amount_sum_1h_live"])


def test_a_served_model_looks_the_fresh_value_up(live: dict[str, Any], deployer: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    from keel.features import stream, training
    from keel.registry.client import Registry
    from keel.serving import predlog
    from keel.serving.deploy import LocalTarget
    from keel.serving.spec import ServeSpec

    s = live["settings"]
    events = live.get("events")
    if events is None:
        pytest.skip("needs the events of test_a_killed_consumer_loses_and_repeats_nothing")
    labelled = events.sample(400, random_state=3).assign(label=lambda d: (d["amount"] > 250).astype(int))
    ts = training.build(s, "live_v1", labelled[["customer_id", "event_timestamp", "label"]], label="label")
    X, y = ts.frame[ts.features].fillna(0), ts.frame["label"]
    model = LogisticRegression(max_iter=200).fit(X, y)
    reg = Registry(s)
    reg.register(model, "live_model", ts, ts.frame, {"roc_auc": 0.5})
    reg.promote("live_model", force=True, reason="test: a model on stream features")
    (port,) = free_ports(1)
    target = LocalTarget(s)
    target.deploy(ServeSpec(model="live_model", port=port, cache_ttl_s=0.0))
    try:
        url = f"http://127.0.0.1:{port}/v1/models/live_model:predict"
        customer = 777_777
        for k in range(1, 4):
            stream.publish(s, SOURCE, [{"customer_id": customer, "amount": 100.0,
                                         "event_timestamp": pd.Timestamp.now(tz="UTC").isoformat()}])
            _wait("the event online", lambda k=k: _online(live, [customer]).loc[customer, "txn_count_1h_live"] == k,
                  30, 0.01)
            req = urllib.request.Request(url, data=json.dumps({"instances": [{"customer_id": customer}]}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert json.loads(resp.read())["degraded"] is False
    finally:
        target.undeploy("live_model")  # flushes the prediction log
    logged = predlog.read(s.predictions_location, "live_model")
    assert logged["txn_count_1h_live"].tolist() == [1, 2, 3]
    assert logged["amount_sum_1h_live"].tolist() == [100.0, 200.0, 300.0]


def test_the_consumer_metrics_reach_prometheus_and_fill_the_stream_panels(live: dict[str, Any]) -> None:
    from keel.monitoring.dashboards import features, panel_queries
    from tests.integration.test_drift import _query

    s = live["settings"]
    _wait("the consumer's series in Prometheus",
          lambda: _query(s, f'keel_stream_events_total{{source="{SOURCE}"}}'), 60, 1.0)
    for title, expr in panel_queries(features()):
        if "keel_stream_" in expr:
            _wait(f"data for the panel {title}: {expr}", lambda e=expr: _query(s, e), 60, 1.0)
    backlog = _query(s, f'keel_stream_backlog_entries{{source="{SOURCE}"}}')
    assert float(backlog[0]["value"][1]) == 0.0  # the consumer has caught up: KeelStreamFeaturesStale stays quiet


def test_bad_events_and_an_unknown_source_are_refused_in_one_line(live: dict[str, Any], tmp_path: Path) -> None:
    from keel.features import stream
    from tests.conftest import run_keel

    s = live["settings"]
    before = stream._redis(s).xlen(stream.stream_key(SOURCE))
    bad = tmp_path / "events.jsonl"
    bad.write_text('{"customer_id": 1, "amount": 5.0, "event_timestamp": "2026-12-07T10:00:00Z"}\n'
                   '{"customer_id": 2, "event_timestamp": "2026-12-07T10:00:01Z"}\n')
    out = run_keel(["stream", "send", SOURCE, str(bad)], s, KEEL_FEATURE_REPO=str(s.repo))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "events[1].amount: missing" in out.stderr
    assert stream._redis(s).xlen(stream.stream_key(SOURCE)) == before  # nothing of the batch was appended
    ghost = run_keel(["stream", "status", "ghost_push"], s, KEEL_FEATURE_REPO=str(s.repo))
    assert ghost.returncode == 2
    assert "unknown push source 'ghost_push'; valid choices: transactions_push" in ghost.stderr
