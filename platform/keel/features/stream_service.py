"""`keel stream consume`: the consumer as a long-running service, with Prometheus metrics.

Metrics (on ``--metrics-port``; locally the consumer registers itself with the stack's Prometheus through
its file_sd directory, and removes itself on exit):

- ``keel_stream_events_total{source}``: events pushed;
- ``keel_stream_event_to_online_seconds{source}``: from an event's arrival in the stream (its entry id's
  time) to its row being in the online store — the freshness a request sees;
- ``keel_stream_backlog_entries{source}``: entries not yet delivered to the group, plus those delivered
  and not yet acknowledged;
- ``keel_stream_last_push_timestamp_seconds{source}``: when a batch was last written.

KeelStreamFeaturesStale fires when entries wait and nothing has been pushed for a minute.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from keel.config import Settings
from keel.features.stream import Consumer, _id_key

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
log = logging.getLogger("keel.stream")


class Metrics:
    def __init__(self, source: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.source = source
        self.events = Counter("keel_stream_events_total", "Events pushed to the feature store", ["source"],
                              registry=self.registry).labels(source)
        self.fresh = Histogram("keel_stream_event_to_online_seconds", "From an event's arrival in the stream to "
                               "its features in the online store", ["source"], buckets=BUCKETS,
                               registry=self.registry).labels(source)
        self.backlog = Gauge("keel_stream_backlog_entries", "Entries waiting: undelivered plus unacknowledged",
                             ["source"], registry=self.registry).labels(source)
        self.last_push = Gauge("keel_stream_last_push_timestamp_seconds", "When a batch was last pushed",
                               ["source"], registry=self.registry).labels(source)


def serve(settings: Settings, source: str, name: str | None, metrics_port: int | None, batch: int = 500,
          claim_idle_ms: int = 30_000) -> None:
    """Consume until SIGTERM/SIGINT; expose metrics; register the scrape target locally."""
    from prometheus_client import start_http_server

    consumer = Consumer(settings, source, name=name, batch=batch, claim_idle_ms=claim_idle_ms)
    metrics = Metrics(source)
    target = None
    if metrics_port is not None:
        server, _ = start_http_server(metrics_port, addr=settings.listen_host, registry=metrics.registry)
        port = server.server_port
        if settings.profile == "local":
            target = settings.home / "prometheus" / "targets" / f"stream-{source}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps([{"targets": [f"{settings.host}:{port}"], "labels": {"stream": source}}]))
    original = consumer.run_once

    def measured() -> int:
        n = original()
        if n:
            now = time.time()
            metrics.events.inc(n)
            metrics.last_push.set(now)
            for entry_id in consumer.last_ids:
                metrics.fresh.observe(max(0.0, now - _id_key(entry_id)[0] / 1000.0))
        try:
            lag = consumer.lag()
            metrics.backlog.set(lag["undelivered"] + lag["pending"])
        except Exception as exc:  # Redis briefly away: the gauge keeps its last value
            log.warning("stream %s: backlog not read (%s)", source, exc)
        return n

    consumer.run_once = measured  # type: ignore[method-assign]
    log.info("consuming %s as %s in group keel (%s)", source, consumer.name,
             ", ".join(v.name for v in consumer.views))
    try:
        consumer.run()
    finally:
        if target is not None:
            Path(target).unlink(missing_ok=True)


def status(settings: Settings, source: str) -> dict[str, Any]:
    """The stream's length, the group's backlog and consumers (for `keel stream status`)."""
    from keel.features.stream import GROUP, _redis, stream_key, views_of

    views_of(settings, source)  # an unknown source is refused with the valid choices
    r = _redis(settings)
    key = stream_key(source)
    length = r.xlen(key) if r.exists(key) else 0
    groups = {g["name"]: g for g in r.xinfo_groups(key)} if length or r.exists(key) else {}
    g = groups.get(GROUP, {})
    consumers = r.xinfo_consumers(key, GROUP) if g else []
    return {"source": source, "length": length, "undelivered": g.get("lag") or 0, "pending": g.get("pending") or 0,
            "consumers": [{"name": c["name"], "pending": c["pending"], "idle_ms": c["idle"]} for c in consumers]}
