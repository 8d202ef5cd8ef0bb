"""Grafana dashboards: committed JSON is current, structure is importable, queries stick to the metrics contract.

With promtool on PATH, every query is also syntax-checked by Prometheus' own parser and evaluated against a
synthetic "quiet" stack (healthy traffic, no errors, fallbacks, drops or retrains yet) that must give every panel
data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.monitoring import dashboards as d
from tests.conftest import ROOT

DASH_DIR = ROOT / "monitoring" / "dashboards"
REGENERATE = "run `python -m keel.monitoring.dashboards` to regenerate monitoring/dashboards/"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILT = d.build_all()
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


def contract() -> dict[str, tuple[str, set[str]]]:
    """Series name -> (type, labels) from the tables under monitoring/README.md's "Metrics contract"."""
    series: dict[str, tuple[str, set[str]]] = {}
    header: list[str] | None = None
    for line in (ROOT / "monitoring" / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-zA-Z_:][\w:]*)`", cells[0])
        if cells[0] == "series":
            header = cells
        elif header and name:
            row = dict(zip(header, cells, strict=False))
            labels = {x.strip() for x in row["labels"].split(",")} - {"—", "-", ""}
            series[name[1]] = (row.get("type", "gauge"), labels)
    return series


CONTRACT = contract()
ALL_QUERIES = [(name, title, expr) for name, dash in BUILT.items() for title, expr in d.panel_queries(dash)]
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def test_contract_was_parsed() -> None:
    assert {"keel_requests_total", "keel_feature_drift_score", "keel_materialization_rows",
            "keel_controller_triggers_pending"} <= CONTRACT.keys()
    assert CONTRACT["keel_request_duration_seconds"] == ("histogram", {"model", "version", "stage"})
    assert CONTRACT["keel_materialization_duration_seconds"][1] == set()


def test_committed_json_is_current() -> None:
    committed = {p.name for p in DASH_DIR.glob("*.json")}
    assert committed == set(BUILT), f"dashboards differ from keel.monitoring.dashboards: {REGENERATE}"
    for name, dash in BUILT.items():
        assert (DASH_DIR / name).read_text(encoding="utf-8") == d.render(dash), f"{name} is stale: {REGENERATE}"


def test_render_is_deterministic() -> None:
    text = d.render(BUILT["keel-model.json"])
    assert text.endswith("}\n") and text == d.render(d.build_all()["keel-model.json"])
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_main_writes_every_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dashboards", str(tmp_path / "out")])
    d.main()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(BUILT)
    assert d.DEFAULT_DIR == DASH_DIR


@pytest.mark.parametrize("name", sorted(BUILT))
def test_dashboard_structure(name: str) -> None:
    dash = BUILT[name]
    assert dash["uid"] == name.removesuffix(".json") and dash["title"] and "keel" in dash["tags"]
    assert dash["schemaVersion"] >= 36 and dash["time"] and dash["refresh"]
    panels = dash["panels"]
    assert panels and len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert p["type"] in {"timeseries", "stat"} and p["title"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"] and "legendFormat" in t, p["title"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in BUILT[name]["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in ("namespace", "model"):
        v = variables[var]
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(keel_requests_total(\{{.*\}})?, {var}\)", v["query"])
    ns = variables["namespace"]
    # locally the scrape adds no namespace label: All must match the empty string
    assert ns["includeAll"] and re.fullmatch(ns["allValue"], "") is not None
    used = {m for p in BUILT[name]["panels"] for t in p["targets"] for m in re.findall(r"\$(\w+)", t["expr"])}
    assert used <= set(variables) | {"__rate_interval", "__range"}


def test_panel_queries_substitute_every_variable() -> None:
    assert ALL_QUERIES
    for _, title, expr in ALL_QUERIES:
        assert "$" not in expr, title
        assert "[1m]" in expr or "rate(" not in expr, title
    with pytest.raises(ValueError, match=r"\$nope"):
        d.panel_queries({"panels": [{"title": "t", "targets": [{"expr": "up{x=~\"$nope\"}"}]}]})


@pytest.mark.parametrize(("name", "title", "expr"), ALL_QUERIES)
def test_queries_use_only_contract_series(name: str, title: str, expr: str) -> None:
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    selectors = SELECTOR.findall(expr)
    assert selectors, f"{title}: no selector"
    assert {s for s, _ in selectors} >= set(re.findall(r"\bkeel_\w+", bare)), f"{title}: a series without matchers"
    labels_in_scope = {"le", "namespace"}
    for metric, matchers in selectors:
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric not in CONTRACT and CONTRACT.get(base, ("",))[0] == "histogram":
            metric = base
        assert metric in CONTRACT, f"{name} / {title}: {metric} is not in monitoring/README.md's metrics contract"
        labels = CONTRACT[metric][1]
        labels_in_scope |= labels
        found = {label: value for label, _, value in MATCHER.findall(matchers)}
        assert found.get("namespace") == ".*", f"{title}: {metric} lacks the namespace matcher"
        if "model" in labels:
            assert found.get("model") == ".*", f"{title}: {metric} lacks the model matcher"
        assert set(found) <= labels | {"namespace"}, f"{title}: {metric} has a label outside the contract"
    for group in re.findall(r"\bby\s*\(([^)]*)\)", bare):
        assert {x.strip() for x in group.split(",")} <= labels_in_scope, f"{title}: by ({group})"


def test_templated_matchers() -> None:
    for dash in BUILT.values():
        for p in dash["panels"]:
            for t in p["targets"]:
                for metric, matchers in SELECTOR.findall(t["expr"]):
                    assert 'namespace=~"$namespace"' in matchers, (p["title"], metric)
                    if "model" in CONTRACT.get(re.sub(r"_(bucket|sum|count)$", "", metric), ("", set()))[1]:
                        assert 'model=~"$model"' in matchers, (p["title"], metric)


def _balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and expr.count('"') % 2 == 0


def test_queries_are_balanced() -> None:
    for _, title, expr in ALL_QUERIES:
        assert _balanced(expr), title


def _rules(kind: str) -> dict[str, Any]:
    if kind == "record":
        rules = [{"record": f"keel_dashboard:q{i}", "expr": expr} for i, (*_, expr) in enumerate(ALL_QUERIES)]
    else:
        rules = [{"alert": f"panel_{i}", "expr": f"absent({expr})"} for i, (*_, expr) in enumerate(ALL_QUERIES)]
    return {"groups": [{"name": "dashboards", "rules": rules}]}


def _legend() -> str:
    return "\n".join(f"  {i}: {name} / {title}" for i, (name, title, _) in enumerate(ALL_QUERIES))


@needs_promtool
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(_rules("record"), sort_keys=False))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nrule index -> panel:\n{_legend()}"


# A healthy stack that has served traffic but never failed: no 5xx, no feature fallbacks, no dropped log records,
# no retraining run, promotion or rollback yet. No `namespace` label, as on the local stack.
QUIET_STACK = {
    'keel_requests_total{model="churn", version="3", code="200"}': "0+20x40",
    'keel_requests_total{model="churn", version="4", code="422"}': "0+1x40",
    **{f'keel_request_duration_seconds_bucket{{model="churn", version="3", stage="{stage}", le="{le}"}}': f"0+{n}x40"
       for stage in ("features", "model", "total") for le, n in (("0.01", 12), ("0.1", 19), ("+Inf", 20))},
    **{f'keel_request_duration_seconds_{part}{{model="churn", version="3", stage="{stage}"}}': f"0+{n}x40"
       for stage in ("features", "model", "total") for part, n in (("sum", 0.4), ("count", 20))},
    'keel_feature_breaker_state{model="churn", version="3"}': "0x40",
    **{f'keel_batch_size_bucket{{model="churn", version="3", le="{le}"}}': f"0+{n}x40"
       for le, n in (("8", 15), ("64", 20), ("+Inf", 20))},
    'keel_batch_size_sum{model="churn", version="3"}': "0+120x40",
    'keel_batch_size_count{model="churn", version="3"}': "0+20x40",
    'keel_predictions_total{model="churn", version="3", role="primary"}': "0+100x40",
    'keel_predictions_total{model="churn", version="4", role="shadow"}': "0+100x40",
    'keel_inflight_requests{model="churn"}': "1x40",
    'keel_requests_shed_total{model="churn", priority="default"}': "0x40",  # exported at 0, never shed
    'keel_feature_cache_total{model="churn", version="3", result="hit"}': "0+12x40",
    'keel_feature_cache_total{model="churn", version="3", result="miss"}': "0+8x40",
    'keel_feature_cache_total{model="churn", version="3", result="stale"}': "0x40",  # exported at 0, never failed
    'keel_feature_cache_entries{model="churn", version="3"}': "40x40",
    'keel_fallback_model_predictions_total{model="churn", version="3", fallback_version="2"}': "0x40",
    'keel_feature_drift_score{model="churn", version="3", feature="tenure", method="psi"}': "0.05x40",
    'keel_feature_drift_detected{model="churn", version="3", feature="tenure", method="psi"}': "0x40",
    'keel_dataset_drift_share{model="churn", version="3"}': "0x40",
    'keel_prediction_drift_score{model="churn", version="3", method="psi"}': "0.02x40",
    'keel_drift_rows_compared{model="churn", version="3", dataset="reference"}': "5000x40",
    'keel_drift_rows_compared{model="churn", version="3", dataset="current"}': "800x40",
    'keel_drift_job_last_success_timestamp_seconds{model="churn"}': "300x40",
    'keel_drift_job_interval_seconds{model="churn"}': "3600x40",
    'keel_feature_materialized_until_timestamp_seconds{feature_view="customer_stats"}': "500x40",
    "keel_materialization_last_success_timestamp_seconds": "520x40",
    "keel_materialization_duration_seconds": "12x40",
    'keel_materialization_rows{feature_view="customer_stats"}': "1000x40",
    "keel_controller_triggers_pending": "0x40",
    # the performance job ran on a version with enough outcomes (no feedback counter yet: it reads 0)
    'keel_model_performance{model="churn", version="3", metric="roc_auc"}': "0.81x40",
    'keel_model_performance_baseline{model="churn", version="3", metric="roc_auc"}': "0.83x40",
    'keel_model_performance_decay{model="churn", version="3", metric="roc_auc"}': "0.02x40",
    'keel_model_performance_decay_threshold{model="churn", version="3", metric="roc_auc"}': "0.05x40",
    'keel_model_label_coverage_ratio{model="churn", version="3"}': "0.4x40",
    'keel_model_labelled_rows{model="churn", version="3"}': "400x40",
    'keel_model_served_rows{model="churn", version="3"}': "1000x40",
    'keel_model_label_delay_seconds{model="churn", version="3", quantile="0.5"}': "3600x40",
    'keel_performance_job_last_success_timestamp_seconds{model="churn"}': "300x40",
    'keel_performance_job_interval_seconds{model="churn"}': "900x40",
    # a stream consumer keeping up
    **{f'keel_stream_event_to_online_seconds_bucket{{source="clicks_push", le="{le}"}}': f"0+{n}x40"
       for le, n in (("0.05", 80), ("0.5", 99), ("+Inf", 100))},
    'keel_stream_event_to_online_seconds_sum{source="clicks_push"}': "0+4x40",
    'keel_stream_event_to_online_seconds_count{source="clicks_push"}': "0+100x40",
    'keel_stream_events_total{source="clicks_push"}': "0+100x40",
    'keel_stream_backlog_entries{source="clicks_push"}': "0x40",
    'keel_stream_last_push_timestamp_seconds{source="clicks_push"}': "0+15x40",
}


@needs_promtool
def test_every_panel_has_data_on_a_quiet_stack(tmp_path: Path) -> None:
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump(_rules("alert"), sort_keys=False))
    tests = {"rule_files": ["dashboards.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in QUIET_STACK.items()],
        "alert_rule_test": [{"eval_time": "10m", "alertname": f"panel_{i}", "exp_alerts": []}
                            for i in range(len(ALL_QUERIES))],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    empty = sorted({int(i) for i in re.findall(r"alertname: panel_(\d+)", proc.stdout + proc.stderr)})
    names = "\n".join(f"  {ALL_QUERIES[i][0]} / {ALL_QUERIES[i][1]}: {ALL_QUERIES[i][2]}" for i in empty)
    assert proc.returncode == 0, f"panels with no data:\n{names}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
