"""Grafana dashboards as code: plain dicts rendered to the JSON committed under ``monitoring/dashboards``.

Why code and not hand-edited JSON: every panel is built from the same few helpers, so each query uses only the
series in ``monitoring/README.md``'s metrics contract, carries the ``namespace``/``model`` matchers, and reads the
templated data source. No dependency beyond the standard library; ``python -m keel.monitoring.dashboards [DIR]``
regenerates the files and a unit test fails when the committed JSON drifts from this module.

Queries are raw PromQL over the contract series (no recording rules), so a dashboard works on any Prometheus that
scrapes keel. Panels whose series only appear after something goes wrong (5xx answers, feature fallbacks,
rollbacks, dropped log records) fall back to 0, so a quiet, healthy stack reads 0 instead of "No data".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

Dashboard = dict[str, Any]
Panel = dict[str, Any]
Target = dict[str, Any]

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "monitoring" / "dashboards"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Locally the scrape adds no `namespace` label; `=~".*"` also matches an absent label (the empty string), so one
# matcher serves both the local stack and a cluster.
NS = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
RATE = "[$__rate_interval]"

# What panel_queries substitutes for Grafana's variables so an expr runs against a plain Prometheus.
PLAIN_PROMETHEUS_VARS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "model": ".*",
    "namespace": ".*",
}

BREAKER_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "closed", "color": "green", "index": 0},
    "1": {"text": "half-open", "color": "orange", "index": 1},
    "2": {"text": "open", "color": "red", "index": 2},
}}]
BREAKER_THRESHOLDS = [(None, "green"), (1, "orange"), (2, "red")]


# --- PromQL helpers ----------------------------------------------------------------------------------------------

def sel(metric: str, *matchers: str, model: bool = True) -> str:
    """A selector with the dashboard's namespace (and, for model-labelled series, model) matchers."""
    return f"{metric}{{{', '.join([NS, *([MODEL] if model else []), *matchers])}}}"


def rate_sum(metric: str, by: str, *matchers: str, model: bool = True) -> str:
    """Per-second rate summed by `by` (empty: one series), over Grafana's scrape-aware window."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({sel(metric, *matchers, model=model)}{RATE}))"


def quantile(q: float, histogram: str, by: str, *matchers: str) -> str:
    """The q-quantile of a histogram's buckets, aggregated by `by` (le is always kept)."""
    keep = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keep}) (rate({sel(histogram + '_bucket', *matchers)}{RATE})))"


def or_zero_like(expr: str, like: str) -> str:
    """`expr`, or 0 for each series of `like` that `expr` lacks: counters born on first failure read 0 until then."""
    return f"({expr} or ({like}) * 0)"


def or_zero(expr: str, label: str = "", value: str = "none") -> str:
    """`expr`, or a single 0 (labelled `label`="none" for the legend) when `expr` has no series at all."""
    zero = f'label_replace(vector(0), "{label}", "{value}", "", "")' if label else "vector(0)"
    return f"({expr} or on() {zero})"


def error_ratio(by: str) -> str:
    """Share of requests answered 5xx (client 4xx are the caller's doing), 0 while no 5xx was ever counted."""
    total = rate_sum("keel_requests_total", by)
    errors = rate_sum("keel_requests_total", by, 'code=~"5.."')
    return f"{or_zero_like(errors, total)} / {total}"


# --- panel helpers -----------------------------------------------------------------------------------------------

def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Target:
    return {"refId": ref, "expr": expr, "legendFormat": legend or "__auto", "datasource": DATASOURCE,
            "instant": instant, "range": not instant}


def _targets(queries: list[tuple[str, str]], instant: bool) -> list[Target]:
    return [target(expr, legend, chr(ord("A") + i), instant) for i, (expr, legend) in enumerate(queries)]


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short", w: int = 12,
               h: int = 8, **defaults: Any) -> Panel:
    """A time-series panel; `queries` are (expr, legendFormat) pairs, refIds assigned A, B, …"""
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": _targets(queries, instant=False),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"},
                                     **defaults}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "gridPos": {"w": w, "h": h},
    }


def stat(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short", w: int = 6, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None, mappings: list[dict[str, Any]] | None = None,
         instant: bool = True) -> Panel:
    """A stat panel of instant values (current state or a total over the dashboard's range)."""
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": _targets(queries, instant=instant),
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": _thresholds(thresholds or [(None, "green")])},
                        "overrides": []},
        "options": {"colorMode": "background" if thresholds else "value", "graphMode": "none",
                    "justifyMode": "auto", "orientation": "auto", "textMode": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "gridPos": {"w": w, "h": h},
    }


def breaker_stat(by: str, legend: str, w: int) -> Panel:
    return stat("Online-store breaker", "Feature-store circuit breaker per serving version: closed, half-open "
                "(probing) or open (serving default features).",
                [(f"max by ({by}) ({sel('keel_feature_breaker_state')})", legend)], w=w,
                thresholds=BREAKER_THRESHOLDS, mappings=BREAKER_MAPPINGS)


def layout(panels: list[Panel]) -> list[Panel]:
    """Number panels and pack them left to right into Grafana's 24-column grid (ids and positions stay stable)."""
    x = y = row_h = 0
    for i, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > GRID_WIDTH:
            x, y, row_h = 0, y + row_h, 0
        panel["id"] = i
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_h = x + w, max(row_h, h)
    return panels


# --- dashboards --------------------------------------------------------------------------------------------------

def _query_variable(name: str, label: str, query: str, all_: bool) -> dict[str, Any]:
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if all_ else {}
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": query,
        "definition": query, "refresh": 2, "sort": 1, "regex": "", "hide": 0, "options": [], "current": current,
        "includeAll": all_, "multi": all_, **({"allValue": ".*"} if all_ else {}),
    }


def templating(all_models: bool = True) -> dict[str, Any]:
    """Data source, namespace and model variables; the namespace's All is `.*` so it matches an absent label."""
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": ""},
        _query_variable("namespace", "Namespace", "label_values(keel_requests_total, namespace)", True),
        _query_variable("model", "Model", f"label_values(keel_requests_total{{{NS}}}, model)", all_models),
    ]}


def dashboard(uid: str, title: str, description: str, panels: list[Panel], all_models: bool = True) -> Dashboard:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["keel"], "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "graphTooltip": 1, "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "annotations": {"list": []}, "templating": templating(all_models), "panels": layout(panels),
        "links": [{"title": "keel", "type": "dashboards", "tags": ["keel"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}],
    }


def overview() -> Dashboard:
    requests = rate_sum("keel_requests_total", "model")
    return dashboard("keel-overview", "keel / Overview", "Every model keel serves: traffic, errors, latency, "
                     "feature-store health and drift.", [
        stat("Models serving", "Models with a loaded serving version (each registers its breaker gauge on load).",
             [(or_zero(f"count(count by (model) ({sel('keel_feature_breaker_state')}))"), "models")], w=4),
        breaker_stat("model", "{{model}}", w=10),
        stat("Dataset drift share", "Share of features the latest drift job flagged, per model.",
             [(f"max by (model) ({sel('keel_dataset_drift_share')})", "{{model}}")], unit="percentunit", w=10,
             thresholds=[(None, "green"), (0.3, "orange"), (0.5, "red")]),
        timeseries("Request rate", "Prediction requests per second, per model.", [(requests, "{{model}}")],
                   unit="reqps"),
        timeseries("Error ratio (5xx)", "Share of requests answered with a server error, per model.",
                   [(error_ratio("model"), "{{model}}")], unit="percentunit", min=0),
        timeseries("p99 latency", "End-to-end (stage=total) 99th percentile latency, per model.",
                   [(quantile(0.99, "keel_request_duration_seconds", "model", 'stage="total"'), "{{model}}")],
                   unit="s"),
        timeseries("Feature fallback rate", "Entities per second served with default features because the "
                   "online store failed, per model.",
                   [(or_zero_like(rate_sum("keel_feature_fallback_total", "model"), requests), "{{model}}")],
                   min=0),
    ])


def model() -> Dashboard:
    latency = "keel_request_duration_seconds"
    return dashboard("keel-model", "keel / Model", "One model: RED by version, latency by stage, champion vs "
                     "challenger traffic, feature-store health and drift.", [
        breaker_stat("version", "v{{version}}", w=6),
        stat("Features drifted", "Features the latest drift job flagged (keel_feature_drift_detected).",
             [(f"sum(max by (feature) ({sel('keel_feature_drift_detected')}))", "features")], w=6,
             thresholds=[(None, "green"), (1, "orange")]),
        stat("Drift job age", "Time since the drift job last succeeded, next to its schedule: stale when the "
             "age exceeds the schedule.",
             [(f"time() - max({sel('keel_drift_job_last_success_timestamp_seconds')})", "age"),
              (f"max({sel('keel_drift_job_interval_seconds')})", "schedule")], unit="s", w=6),
        stat("Prediction-log drops", "Prediction-log records dropped over the dashboard's range (buffer full).",
             [(or_zero(f"sum(increase({sel('keel_prediction_log_dropped_total')}[$__range]))"), "dropped")], w=6,
             thresholds=[(None, "green"), (1, "red")]),
        timeseries("Requests by version and code", "Requests per second by serving version and HTTP code.",
                   [(rate_sum("keel_requests_total", "version, code"), "v{{version}} {{code}}")], unit="reqps"),
        timeseries("Error ratio by version (5xx)", "Share of requests answered with a server error.",
                   [(error_ratio("version"), "v{{version}}")], unit="percentunit", min=0),
        timeseries("Latency by version", "End-to-end (stage=total) latency quantiles per serving version.",
                   [(quantile(q, latency, "version", 'stage="total"'), f"p{round(q * 100)} v{{{{version}}}}")
                    for q in (0.5, 0.95, 0.99)], unit="s"),
        timeseries("p99 latency by stage", "Where the time goes: online feature lookup, model call, total.",
                   [(quantile(0.99, latency, "stage"), "{{stage}}")], unit="s"),
        timeseries("Predictions by role", "Entities scored per second: primary (champion), canary and shadow "
                   "(challenger) versions side by side.",
                   [(rate_sum("keel_predictions_total", "role, version"), "{{role}} v{{version}}")]),
        timeseries("Feature fallback rate by reason", "Entities per second served with default features, by "
                   "why the online store failed.",
                   [(or_zero(rate_sum("keel_feature_fallback_total", "reason"), "reason"), "{{reason}}")], min=0),
        timeseries("Fallback model", "Entities per second scored by the serving spec's fallback version "
                   "(fewer or no online features) because their features had to be defaulted.",
                   [(or_zero(rate_sum("keel_fallback_model_predictions_total", "fallback_version"), "fallback_version"),
                     "fallback v{{fallback_version}}")], min=0, w=8),
        timeseries("Batch size", "Entities per model call.",
                   [(quantile(q, "keel_batch_size", "version"), f"p{round(q * 100)} v{{{{version}}}}")
                    for q in (0.5, 0.95)], w=8),
        timeseries("In-flight requests", "Requests being processed right now.",
                   [(f"sum({sel('keel_inflight_requests')})", "in flight")], w=8),
        timeseries("Prediction-log drop rate", "Records per second dropped because the log buffer was full.",
                   [(or_zero(rate_sum("keel_prediction_log_dropped_total", "")), "dropped")], w=8, min=0),
        timeseries("Shed requests by priority", "Prediction requests per second refused with 503 + Retry-After "
                   "because a replica held max_inflight requests (load shedding); the lowest class goes first.",
                   [(rate_sum("keel_requests_shed_total", "priority"), "{{priority}}")], unit="reqps", min=0),
        timeseries("Offered vs served", "Requests per second offered (served + shed) next to those served: "
                   "the gap is what more replicas would take.",
                   [(f"{rate_sum('keel_requests_total', '')} + {rate_sum('keel_requests_shed_total', '')}",
                     "offered"), (rate_sum("keel_requests_total", ""), "served")], unit="reqps", min=0),
        timeseries("Drift score by feature", "Per-feature drift statistic from the latest drift job.",
                   [(f"max by (feature, method) ({sel('keel_feature_drift_score')})", "{{feature}} ({{method}})")]),
        timeseries("Prediction drift", "Drift statistic of the model's output.",
                   [(f"max by (version, method) ({sel('keel_prediction_drift_score')})", "v{{version}} {{method}}")]),
        timeseries("Dataset drift share", "Share of features that drifted (0–1).",
                   [(f"max by (version) ({sel('keel_dataset_drift_share')})", "v{{version}}")], unit="percentunit",
                   min=0, max=1),
        timeseries("Drift rows compared", "Rows in the reference and current samples: a tiny current sample "
                   "makes drift scores noisy.",
                   [(f"max by (dataset) ({sel('keel_drift_rows_compared')})", "{{dataset}}")]),
    ], all_models=False)


def features() -> Dashboard:
    latency = "keel_request_duration_seconds"
    return dashboard("keel-features", "keel / Feature store", "Online feature lookups as serving sees them, and "
                     "the materialization job that fills the online store.", [
        stat("Last materialization", "Time since materialization last finished.",
             [(f"time() - max({sel('keel_materialization_last_success_timestamp_seconds', model=False)})", "age")],
             unit="s", w=6),
        stat("Materialization duration", "How long the last materialization took.",
             [(f"max({sel('keel_materialization_duration_seconds', model=False)})", "duration")], unit="s", w=6),
        breaker_stat("model, version", "{{model}} v{{version}}", w=12),
        timeseries("Feature lookup latency", "Online-store lookup latency (stage=features) quantiles per model.",
                   [(quantile(q, latency, "model", 'stage="features"'), f"p{round(q * 100)} {{{{model}}}}")
                    for q in (0.5, 0.95, 0.99)], unit="s"),
        timeseries("Fallback rate by reason", "Entities per second served with default features, by reason.",
                   [(or_zero(rate_sum("keel_feature_fallback_total", "model, reason"), "reason"),
                     "{{model}} {{reason}}")], min=0),
        timeseries("Feature cache hit ratio", "Share of entity lookups the replicas' in-process cache answered "
                   "fresh (the rest read the online store): high on skewed traffic, near 0 on uniform keys.",
                   [(rate_sum("keel_feature_cache_total", "model", 'result="hit"') + " / "
                     + rate_sum("keel_feature_cache_total", "model", 'result=~"hit|miss"'), "{{model}}")],
                   unit="percentunit", min=0, max=1, w=8),
        timeseries("Stale answers", "Entities per second served their last known values (flagged degraded) "
                   "because the online store failed: stale-if-error.",
                   [(rate_sum("keel_feature_cache_total", "model", 'result="stale"'), "{{model}}")], min=0, w=8),
        timeseries("Cached entities", "Entities each model's replicas hold in the feature cache (bounded by "
                   "the serving spec's cache size).",
                   [(f"sum by (model) ({sel('keel_feature_cache_entries')})", "{{model}}")], w=8),
        timeseries("Materialization freshness", "How far behind now each feature view's online data ends.",
                   [(f"time() - max by (feature_view) "
                     f"({sel('keel_feature_materialized_until_timestamp_seconds', model=False)})", "{{feature_view}}")],
                   unit="s"),
        timeseries("Rows materialized", "Rows the last materialization wrote to the online store, per view.",
                   [(f"max by (feature_view) ({sel('keel_materialization_rows', model=False)})", "{{feature_view}}")]),
        timeseries("Stream freshness", "From an event's arrival in its stream to its features in the online store, "
                   "per push source (keel stream consume).",
                   [(f"histogram_quantile({q}, sum by (le, source) (rate("
                     f"{sel('keel_stream_event_to_online_seconds_bucket', model=False)}{RATE})))",
                     f"p{round(q * 100)} {{{{source}}}}") for q in (0.5, 0.99)], unit="s", w=8),
        timeseries("Stream backlog", "Events waiting per push source: not yet delivered to the consumer, or not "
                   "yet acknowledged (KeelStreamFeaturesStale when it waits with no push).",
                   [(f"max by (source) ({sel('keel_stream_backlog_entries', model=False)})", "{{source}}")], w=8),
        timeseries("Stream events", "Events per second whose features were pushed, per push source.",
                   [(rate_sum("keel_stream_events_total", "source", model=False), "{{source}}")], min=0, w=8),
    ])


def retraining() -> Dashboard:
    runs = "keel_retrain_runs_total"
    return dashboard("keel-retraining", "keel / Retraining", "Retraining DAG runs, champion changes and the "
                     "controller's queue of alert-triggered retrains.", [
        stat("Runs by outcome", "Retraining runs over the dashboard's range: promoted, refused (gate said no), "
             "failed, rolled_back.",
             [(or_zero(f"sum by (outcome) (increase({sel(runs)}[$__range]))", "outcome"), "{{outcome}}")], w=12),
        stat("Promotions", "Champion changes by promotion over the range.",
             [(or_zero(f"sum(increase({sel('keel_promotions_total')}[$__range]))"), "promotions")], w=4),
        stat("Rollbacks", "Champion changes by rollback over the range.",
             [(or_zero(f"sum(increase({sel('keel_rollbacks_total')}[$__range]))"), "rollbacks")], w=4,
             thresholds=[(None, "green"), (1, "orange")]),
        stat("Pending triggers", "Alert-triggered retrains waiting for Airflow (no data: the controller is not "
             "scraped).", [(f"sum({sel('keel_controller_triggers_pending', model=False)})", "pending")], w=4,
             thresholds=[(None, "green"), (1, "orange")]),
        timeseries("Runs by outcome (per hour)", "Retraining runs per hour, by model and outcome.",
                   [(or_zero(f"sum by (model, outcome) (increase({sel(runs)}[1h]))", "outcome"),
                     "{{model}} {{outcome}}")], min=0),
        timeseries("Champion changes (per hour)", "Promotions and rollbacks per hour, by model.",
                   [(or_zero(f"sum by (model) (increase({sel('keel_promotions_total')}[1h]))"), "promoted {{model}}"),
                    (or_zero(f"sum by (model) (increase({sel('keel_rollbacks_total')}[1h]))"),
                     "rolled back {{model}}")], min=0),
    ])


def build_all() -> dict[str, Dashboard]:
    """Every dashboard keel ships, by file name."""
    from keel.monitoring.dashboard_performance import performance

    return {f"{d['uid']}.json": d for d in (overview(), model(), features(), retraining(), performance())}


def render(dash: Dashboard) -> str:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline) so regeneration gives clean diffs."""
    return json.dumps(dash, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every dashboard into `directory` (created if needed); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dash in build_all().items():
        path = directory / name
        path.write_text(render(dash), encoding="utf-8")
        written.append(path)
    return written


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def panel_queries(dash: Dashboard) -> list[tuple[str, str]]:
    """(panel title, expr) for every target, with Grafana's variables replaced so a plain Prometheus can run it."""

    def plain(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in PLAIN_PROMETHEUS_VARS:
            raise ValueError(f"no plain-Prometheus value for Grafana variable ${name}")
        return PLAIN_PROMETHEUS_VARS[name]

    return [(p["title"], _VAR.sub(plain, t["expr"])) for p in dash["panels"] for t in p.get("targets", [])]


def main() -> None:
    """`python -m keel.monitoring.dashboards [DIR]`: regenerate the committed dashboards (default DIR: the repo's)."""
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    for path in write_all(directory):
        print(path)


if __name__ == "__main__":
    main()
