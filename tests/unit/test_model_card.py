"""Model cards from fixed inputs: every section, the slice breakdown, and HTML that escapes every value."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from keel.errors import KeelError
from keel.project import ModelSpec
from keel.registry import card as c
from keel.registry import metrics as m
from keel.registry.audit import AuditRecord

EVIL = "<script>alert('x')</script> & \"quotes\" | pipes"
TAGS = {"keel.task": "binary", "keel.label": "y", "keel.features": "a,b", "keel.feature_service": "svc_v1",
        "keel.feature_views": "view_a,view_b", "keel.training_window_start": "2026-10-01T00:00:00+00:00",
        "keel.training_window_end": "2026-10-31T00:00:00+00:00", "keel.training_set_hash": "snap123",
        "keel.git_sha": "abc123def", "keel.keel_version": "0.1.0", "keel.training_rows": "4000",
        "keel.promotion_metric": "roc_auc", "keel.metric.roc_auc": "0.875", "keel.gate_greater_is_better": "true"}


def _frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a + 0.5 * b + rng.normal(scale=0.8, size=n) > 0).astype(int)
    segment = rng.choice(["north", "south", "east", None], size=n, p=[0.5, 0.3, 0.15, 0.05])
    return pd.DataFrame({"a": a, "b": b, "y": y, "segment": segment})


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRegression, pd.DataFrame]:
    train, holdout = _frame(seed=1), _frame(seed=2)
    return LogisticRegression().fit(train[["a", "b"]], train["y"]), holdout


def _spec(**card: str) -> ModelSpec:
    return ModelSpec(name="churn", feature_service="svc_v1", label="y", labels="events.parquet", task="binary",
                     train="model:train", card=card)


def _inputs(holdout: c.HoldoutMetrics | str, spec: ModelSpec | None, **kw: object) -> c.CardInputs:
    audit = [AuditRecord("register", "churn", "challenger", None, "3", "alice", "nightly"),
             AuditRecord("promote", "churn", "champion", "2", "3", "bob", EVIL,
                         details={"metric": "roc_auc", "challenger": 0.9, "champion": 0.85}),
             AuditRecord("rollback", "churn", "champion", "3", "2", "carol", "bad canary")]
    drift = [{"time": "2026-11-01T10:00:00+00:00", "window": "w1", "run_id": "run-d1",
              "metrics": {"dataset_drift_share": 0.25, "rows_current": 900.0, "drift_score.a": 0.3,
                          "drift_score.b": 0.01}}]
    return c.CardInputs("churn", "3", dict(TAGS), ["champion"], 1_790_000_000_000, "run-3", spec, holdout,
                        drift=drift, audit=audit, **kw)  # type: ignore[arg-type]


def test_holdout_metrics_overall_and_per_slice_equal_direct_computation(fitted) -> None:
    model, holdout = fitted
    names = list(m.REPORTED["binary"])
    h = c.holdout_metrics(model, holdout, ["a", "b"], "y", "binary", names, slice_column="segment")
    out = m.scores(model, holdout[["a", "b"]], "binary")
    assert h.rows == len(holdout)
    assert h.overall == pytest.approx(m.evaluate("binary", holdout["y"].to_numpy(), out))
    assert [s[0] for s in h.slices] == ["north", "south", "east", "(null)"]  # largest first, nulls a slice
    for value, rows, got in h.slices:
        mask = holdout["segment"].isna() if value == "(null)" else holdout["segment"] == value
        assert rows == int(mask.sum())
        assert got == pytest.approx(m.evaluate("binary", holdout.loc[mask, "y"].to_numpy(), out[mask.to_numpy()]))


def test_slices_are_limited_to_the_largest_and_an_undefined_metric_is_none(fitted) -> None:
    model, holdout = fitted
    many = holdout.assign(bucket=np.arange(len(holdout)) % 50, y=np.where(np.arange(len(holdout)) % 50 == 0, 1,
                                                                           holdout["y"]))
    h = c.holdout_metrics(model, many, ["a", "b"], "y", "binary", ["roc_auc", "log_loss"], slice_column="bucket",
                          limit=20)
    assert len(h.slices) == 20 and h.slice_count == 50
    single = dict((s[0], s[2]) for s in h.slices)["0"]  # bucket 0 is all positives: no ROC AUC
    assert single["roc_auc"] is None and single["log_loss"] is not None
    md = c.render(_inputs(h, _spec(slice="bucket"))).markdown
    assert "the 20 largest of 50 values" in md and "| bucket=0 | 60 | n/a |" in md


def test_a_slice_column_absent_from_the_holdout_is_a_note(fitted) -> None:
    model, holdout = fitted
    h = c.holdout_metrics(model, holdout, ["a", "b"], "y", "binary", ["roc_auc"], slice_column="country")
    assert h.slices == [] and "'country'" in (h.note or "")
    md = c.render(_inputs(h, _spec(slice="country"))).markdown
    assert "Slice column 'country' (card.slice in keel.yaml) is not in this version's stored holdout" in md


def test_every_section_is_rendered_in_markdown_and_html(fitted) -> None:
    model, holdout = fitted
    h = c.holdout_metrics(model, holdout, ["a", "b"], "y", "binary", ["roc_auc", "log_loss"], slice_column="segment")
    card = c.render(_inputs(h, _spec(intended_use="Rank accounts for retention calls.", slice="segment")))
    md, page = card.markdown, card.html
    assert md.startswith("# Model card: churn v3")
    for title in c.SECTIONS:
        assert f"\n## {title}\n" in md
        assert f"<h2>{title}</h2>" in page
    assert "Rank accounts for retention calls." in md
    assert "- **task**: binary" in md and "- **gate metric**: roc_auc (higher is better; tolerance 0.0)" in md
    assert "2026-10-01T00:00:00+00:00 → 2026-10-31T00:00:00+00:00" in md
    for value in ("svc_v1", "view_a,view_b", "snap123", "abc123def", "- **keel version**: 0.1.0"):
        assert value in md
    assert f"| all | {len(holdout)} | {h.overall['roc_auc']:.4f} | {h.overall['log_loss']:.4f} |" in md
    north = dict((s[0], s) for s in h.slices)["north"]
    assert f"| segment=north | {north[1]} | {north[2]['roc_auc']:.4f} |" in md
    assert "| 2026-11-01T10:00:00+00:00 | w1 | 0.2500 | 900 | 2 | run-d1 |" in md
    assert "No live performance measured yet" in md
    assert "| promote | bob | champion: v2 → v3 |" in md and "| rollback | carol | champion: v3 → v2 |" in md
    assert "| register | alice | challenger: none → v3 |" in md


def test_live_performance_runs_are_a_table() -> None:
    perf = [{"time": "2026-11-02T00:00:00+00:00", "window": "7d", "run_id": "run-p1",
             "metrics": {"roc_auc": 0.8123, "labelled_rows": 1500.0, "label_coverage": 0.5}}]
    md = c.render(_inputs("not computed", _spec(), performance=perf)).markdown
    assert "| time | window | labelled_rows | label_coverage | roc_auc | run |" in md
    assert "| 2026-11-02T00:00:00+00:00 | 7d | 1,500 | 0.5000 | 0.8123 | run-p1 |" in md
    assert "No live performance measured yet" not in md


def test_html_escapes_every_value_and_is_self_contained() -> None:
    spec = _spec(intended_use=EVIL)
    card = c.render(_inputs("not computed", spec))
    page = card.html
    assert "<script>" not in page and "alert('x')" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "http" not in page.replace('lang="en"', "")  # no external assets
    assert "<link" not in page and "src=" not in page
    # a value with a pipe stays inside its Markdown table cell
    assert "| promote | bob | champion: v2 → v3 | <script>alert('x')</script> & \"quotes\" \\| pipes |" in card.markdown


def test_a_version_outside_the_spec_says_so_and_takes_the_task_from_its_tag() -> None:
    md = c.render(_inputs("no holdout recorded: registered without keel", None)).markdown
    assert "'churn' is not in the project spec" in md
    assert "- **task**: binary" in md and "version tag keel.task" in md
    assert "No holdout recorded: registered without keel." in md
    tags = {k: v for k, v in TAGS.items() if k != "keel.task"}
    bare = c.render(c.CardInputs("plain", "1", tags)).markdown
    assert "- **task**: not recorded" in bare and "No drift runs for this version yet" in bare
    assert "No promotions or rollbacks recorded" in bare


def test_a_card_failure_is_a_warning_not_a_failed_registration(caplog: pytest.LogCaptureFixture) -> None:
    class NoProject:
        def spec(self) -> None:
            raise KeelError("no project spec")

    class Broken:
        settings = NoProject()

        def progress(self, msg: str) -> None:
            pass

        def version(self, name: str, version: str) -> None:
            raise RuntimeError("MLflow went away")

    with caplog.at_level(logging.WARNING, logger="keel.registry.card"):
        c.on_register(Broken(), "churn", "3", None, pd.DataFrame())  # type: ignore[arg-type]
    assert "model card of 'churn' v3 not written (RuntimeError: MLflow went away); run `keel models card churn 3`" \
        in caplog.text
