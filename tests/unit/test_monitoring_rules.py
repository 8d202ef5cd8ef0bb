"""Prometheus rules in monitoring/: promtool accepts and tests them, and they keep to the conventions.

Conventions: every alert has severity/category labels and summary/description/runbook_url annotations,
each runbook_url points at a section of monitoring/RUNBOOK.md, each alert has a promtool test that
pins its `for:` boundary (not firing one evaluation before, firing at it), and rules only use series
from the metrics contract in monitoring/README.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

MONITORING = ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
TEST_FILES = sorted((MONITORING / "tests").glob("*.yml"))
RUNBOOK_PREFIX = "https://github.com/keel-ml/keel/blob/main/monitoring/RUNBOOK.md#"
SEVERITIES = {"page", "ticket", "info"}
CATEGORIES = {"drift", "performance", "serving", "features", "retraining"}
DRIFT_ALERTS = {"KeelDatasetDrift", "KeelDriftJobStale"}
PERFORMANCE_ALERTS = {"KeelModelPerformanceDecay", "KeelPerformanceJobStale"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                   "offset", "bool", "inf", "nan", "atan2"}
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt package prometheus)")


def _rules() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            assert "interval" not in group, f"{path.name}: group {group['name']} must use the global interval"
            out.extend(group["rules"])
    return out


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a Prometheus duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def contract_metrics() -> tuple[set[str], set[str]]:
    """(every series name in the README's contract tables, the histograms among them)."""
    names: set[str] = set()
    histograms: set[str] = set()
    type_col: int | None = None
    for line in (MONITORING / "README.md").read_text().splitlines():
        if not line.startswith("|"):
            type_col = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "series":
            type_col = cells.index("type") if "type" in cells else None
            continue
        m = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0])
        if m:
            names.add(m.group(1))
            if type_col is not None and cells[type_col] == "histogram":
                histograms.add(m.group(1))
    return names, histograms


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: label matchers, strings, durations, grouping labels,
    function calls, keywords and numbers removed."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def _alert_tests() -> list[tuple[str, float, dict[str, Any]]]:
    """(test file name, its evaluation interval in seconds, one test group) for every test group."""
    out = []
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        interval = _duration_s(doc.get("evaluation_interval", "1m"))
        out.extend((path.name, interval, test) for test in doc.get("tests", []))
    return out


def test_rule_and_test_files_exist() -> None:
    assert {p.name for p in RULE_FILES} >= {"recording.yml", "alerts.yml"}
    assert TEST_FILES, "no promtool tests in monitoring/tests"


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    proc = subprocess.run([PROMTOOL, "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_labels_and_annotations() -> None:
    alerts = _alerts()
    assert alerts
    for rule in alerts:
        name, labels, ann = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
        assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
        assert labels.get("category") in CATEGORIES, f"{name}: category {labels.get('category')!r}"
        for key in ("summary", "description", "runbook_url"):
            assert str(ann.get(key, "")).strip(), f"{name}: annotation {key} missing"
        assert "{{" in ann["description"], f"{name}: description should show templated values"
        assert ann["runbook_url"].startswith(RUNBOOK_PREFIX), f"{name}: runbook_url {ann['runbook_url']}"
        assert _duration_s(rule["for"]) > 0, f"{name}: needs a for: duration"
        if name in DRIFT_ALERTS:
            assert labels["category"] == "drift", f"{name}: Alertmanager routes drift alerts by category=drift"
        if name in PERFORMANCE_ALERTS:
            assert labels["category"] == "performance", f"{name}: routed to the controller by category=performance"


def test_runbook_anchors_match_headings() -> None:
    headings = [line[3:] for line in (MONITORING / "RUNBOOK.md").read_text().splitlines() if line.startswith("## ")]
    anchors = {github_anchor(h) for h in headings}
    for rule in _alerts():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX)
        assert anchor in anchors, f"{rule['alert']}: no RUNBOOK.md section for #{anchor}"
        assert anchor == github_anchor(rule["alert"]), f"{rule['alert']}: runbook section is not named after it"


def test_github_anchor() -> None:
    assert github_anchor("KeelDatasetDrift") == "keeldatasetdrift"
    assert github_anchor("What it means (p99 > 200ms)!") == "what-it-means-p99--200ms"


def test_every_alert_is_tested_at_its_for_boundary() -> None:
    """Each alert has a firing case and a non-firing case, and in one test group a non-firing case
    exactly one evaluation before a firing one."""
    firing: dict[str, set[float]] = {}
    quiet: dict[str, set[float]] = {}
    boundary: set[str] = set()
    for _, interval, test in _alert_tests():
        group_firing: dict[str, set[float]] = {}
        group_quiet: dict[str, set[float]] = {}
        for case in test.get("alert_rule_test", []):
            at = _duration_s(case["eval_time"])
            bucket = group_firing if case.get("exp_alerts") else group_quiet
            bucket.setdefault(case["alertname"], set()).add(at)
        for name, times in group_firing.items():
            firing.setdefault(name, set()).update(times)
            if any(t - interval in group_quiet.get(name, set()) for t in times):
                boundary.add(name)
        for name, times in group_quiet.items():
            quiet.setdefault(name, set()).update(times)
    for name in sorted({r["alert"] for r in _alerts()}):
        assert name in firing, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where it does not fire"
        assert name in boundary, f"{name}: no quiet case one evaluation before a firing case"


def test_every_recording_rule_is_tested() -> None:
    tested = set()
    for _, _, test in _alert_tests():
        for case in test.get("promql_expr_test", []):
            tested |= metric_names(case["expr"])
    missing = {r["record"] for r in _rules() if "record" in r} - tested
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


def test_rules_use_only_contract_metrics() -> None:
    names, histograms = contract_metrics()
    assert {"keel_requests_total", "keel_dataset_drift_share", "keel_controller_triggers_pending"} <= names
    assert histograms == {"keel_request_duration_seconds", "keel_batch_size", "keel_stream_event_to_online_seconds"}
    allowed = names | {h + s for h in histograms for s in HISTOGRAM_SUFFIXES}
    allowed |= {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        used = metric_names(str(rule["expr"]))
        assert used, f"{rule.get('alert') or rule.get('record')}: no series found in its expr"
        unknown = used - allowed
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: not in the metrics contract: {unknown}"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (model, le) (rate(keel_request_duration_seconds_bucket{stage="total",'
            'le!="x"}[5m])) and on (model) (time() - max(up offset 1h) > 2 * 3600)) / keel:requests:rate5m')
    assert metric_names(expr) == {"keel_request_duration_seconds_bucket", "up", "keel:requests:rate5m"}


def test_a_test_file_that_orders_groups_orders_every_group() -> None:
    """promtool evaluates the groups a test file's group_eval_order leaves out in no fixed order: an alert
    reading a recording rule of the same instant then fires one evaluation late, some runs only."""
    groups = {g["name"] for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]}
    for path in TEST_FILES:
        order = yaml.safe_load(path.read_text()).get("group_eval_order")
        if order is not None:
            assert set(order) == groups, f"{path.name}: group_eval_order lacks {sorted(groups - set(order))}"
