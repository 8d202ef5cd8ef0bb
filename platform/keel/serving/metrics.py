"""Serving metrics, in the default prometheus_client registry (so KServe's own /metrics shows them).

Labels are bounded: model, version, stage, code, role, reason. Never an entity id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)

REQUESTS = Counter("keel_requests_total", "Prediction requests by outcome", ["model", "version", "code"])
LATENCY = Histogram("keel_request_duration_seconds", "Prediction latency by stage (features, model, total)",
                    ["model", "version", "stage"], buckets=LATENCY_BUCKETS)
FALLBACK = Counter("keel_feature_fallback_total",
                   "Entities served degraded because the online store failed: default feature values, or the "
                   "feature cache's last known values (reason stale)",
                   ["model", "version", "reason"])
BREAKER = Gauge("keel_feature_breaker_state", "Online-store circuit breaker: 0 closed, 1 half-open, 2 open",
                ["model", "version"])
BATCH = Histogram("keel_batch_size", "Entities per model call", ["model", "version"],
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
PREDICTIONS = Counter("keel_predictions_total", "Entities scored, by role (primary, canary, shadow)",
                      ["model", "version", "role"])
INFLIGHT = Gauge("keel_inflight_requests", "Requests being processed", ["model"])
LOG_DROPPED = Counter("keel_prediction_log_dropped_total", "Prediction-log records dropped (buffer full)",
                      ["model"])
FALLBACK_MODEL = Counter("keel_fallback_model_predictions_total",
                         "Entities scored by the serving spec's fallback model version because the online "
                         "store failed or features were missing", ["model", "version", "fallback_version"])
CACHE = Counter("keel_feature_cache_total",
                "Entity lookups by the in-process feature cache's answer: hit (fresh), miss (read from the store) "
                "or stale (the last known values, served while the store fails)", ["model", "version", "result"])
CACHE_ENTRIES = Gauge("keel_feature_cache_entries", "Entities held by the in-process feature cache",
                      ["model", "version"])
