"""Model cards: one page per registered version, generated from what keel already records.

Nothing here is typed in by hand except the spec's ``card.intended_use``: the task and gate come from
the project spec (or the version's tags when no spec names the model), lineage from the version's tags,
holdout metrics from scoring the holdout stored at registration with the version's own model (so a card
regenerated a year later says the same thing), drift and live performance from the monitoring runs in
MLflow (experiment ``keel/<model>/monitoring``), promotions and rollbacks from the audit trail. A card is
written at every registration and again by ``keel models card``, which picks up the history since.

Gathering (:func:`build`) is apart from rendering (:func:`render_markdown`, :func:`render_html`): both
renderers walk the same sections, so Markdown and HTML never disagree, and every value reaches the
HTML through one escaping function.
"""

from __future__ import annotations

import html
import json
import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keel.errors import KeelError
from keel.registry import metrics as m

if TYPE_CHECKING:
    import pandas as pd

    from keel.config import Settings
    from keel.registry.client import Registry

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "card"
MARKDOWN, HTML = "model_card.md", "model_card.html"
CARD_TAG = "keel.card"
MAX_SLICES = 20  # the largest slices only: a high-cardinality column must not make a card of thousands of rows
MAX_RUNS = 20  # monitoring runs shown per kind, newest first
AUDIT_ACTIONS = ("promote", "force-promote", "promote-refused", "rollback")
LIVE_COUNTS = ("labelled_rows", "label_coverage", "label_delay_p50_seconds")
LINEAGE = (("training rows", "training_rows"), ("feature service", "feature_service"),
           ("feature views", "feature_views"), ("feature definition hash", "feature_definition_hash"),
           ("training-set snapshot hash", "training_set_hash"), ("snapshot", "training_set_uri"),
           ("created-timestamp filter", "created_filter"), ("holdout hash", "holdout_hash"),
           ("git sha", "git_sha"), ("keel version", "keel_version"))
COUNTS = ("rows_current", "labelled_rows")  # shown as whole numbers
SECTIONS = ("Intended use", "Task", "Training data and lineage", "Holdout metrics", "Drift history",
            "Live performance", "Promotions and rollbacks")


# -- the card's shape: sections of paragraphs, facts and tables ----------------------------------------
@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


Block = str | dict[str, str] | Table  # a paragraph, facts (label → value), a table


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


@dataclass
class HoldoutMetrics:
    """Metrics of one version on its stored holdout: overall and per value of ``slice_column``."""

    names: list[str]
    rows: int
    overall: dict[str, float | None]
    slice_column: str | None = None
    slices: list[tuple[str, int, dict[str, float | None]]] = field(default_factory=list)
    slice_count: int = 0
    note: str | None = None  # why there is no breakdown (column absent, none configured)


@dataclass
class CardInputs:
    """Everything a card says, already gathered (what the unit tests build by hand)."""

    model: str
    version: str
    tags: dict[str, str]
    aliases: list[str] = field(default_factory=list)
    created_ms: int | None = None
    run_id: str | None = None
    spec: Any = None  # keel.project.ModelSpec, or None when no spec names the model
    holdout: HoldoutMetrics | str = "not computed"  # the metrics, or why there are none
    drift: list[dict[str, Any]] = field(default_factory=list)
    performance: list[dict[str, Any]] = field(default_factory=list)
    audit: list[Any] = field(default_factory=list)  # AuditRecord
    generated: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class ModelCard:
    model: str
    version: str
    sections: list[Section]
    markdown: str
    html: str
    run_id: str | None = None  # the version's run, where the card is logged
    uri: str | None = None  # where it was logged (runs:/<run>/card/model_card.md)


def _safe(name: str, task: str, y: Any, out: Any, classes: Any) -> float | None:
    """A metric, or None where it is undefined (a slice with one class has no ROC AUC)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = m.metric(name, task)(y, out, classes)
    except (ValueError, ZeroDivisionError, IndexError):
        return None
    return None if math.isnan(v) else v


def holdout_metrics(model: Any, holdout: pd.DataFrame, features: list[str], label: str, task: str,
                    names: list[str], classes: list[Any] | None = None, slice_column: str | None = None,
                    limit: int = MAX_SLICES) -> HoldoutMetrics:
    """Score ``holdout`` once with ``model``; the metrics ``names`` overall and for each of the ``limit``
    largest values of ``slice_column`` (nulls are a slice of their own)."""
    import pandas as pd

    out = m.scores(model, holdout[features], task)
    y = holdout[label].to_numpy()
    result = HoldoutMetrics(names, len(holdout), {n: _safe(n, task, y, out, classes) for n in names},
                            slice_column)
    if slice_column is None:
        result.note = "no slice column: set card.slice in keel.yaml to break these metrics down"
        return result
    if slice_column not in holdout.columns:
        result.note = (f"slice column '{slice_column}' (card.slice in keel.yaml) is not in this version's stored "
                       f"holdout (its columns: {', '.join(map(str, holdout.columns))}); no breakdown")
        return result
    key = holdout[slice_column].reset_index(drop=True)
    counts = key.value_counts(dropna=False).loc[lambda n: n > 0]  # a categorical's unused values are no slice
    result.slice_count = len(counts)
    for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:limit]:
        mask = (key.isna() if pd.isna(value) else key == value).to_numpy()
        shown = "(null)" if pd.isna(value) else str(value)
        result.slices.append((shown, int(n), {k: _safe(k, task, y[mask], out[mask], classes) for k in names}))
    return result


def spec_for(settings: Settings, name: str) -> Any:
    """The model's spec when a readable project spec names it; None otherwise (a card still gets made)."""
    try:
        return settings.spec().models.get(name)
    except KeelError:
        return None


def slice_columns(settings: Settings, name: str) -> list[str]:
    """The spec's slice column for ``name`` (kept in the stored holdout at registration), if any."""
    spec = spec_for(settings, name)
    return [spec.card.slice] if spec is not None and spec.card.slice else []


def default_version(registry: Registry, name: str) -> str:
    """The champion, else the latest version."""
    from keel.registry.client import CHAMPION

    champion = registry._model(name).aliases.get(CHAMPION)
    if champion is not None:
        return str(champion)
    versions = [int(v.version) for v in registry.client.search_model_versions(f"name='{name}'")]
    if not versions:
        raise KeelError(f"model '{name}' has no versions yet; register one with `keel train {name}`")
    return str(max(versions))


def _task(tags: dict[str, str], spec: Any) -> str | None:
    return spec.task if spec is not None else tags.get("keel.task")


def _holdout(registry: Registry, v: Any, spec: Any, model: Any, holdout: pd.DataFrame | None) -> HoldoutMetrics | str:
    task, label = _task(v.tags, spec), v.tags.get("keel.label")
    features = [f for f in v.tags.get("keel.features", "").split(",") if f]
    if not features or not label or task not in m.TASKS:
        return "no holdout recorded: this version was registered without keel (no features, label or task tags)"
    try:
        holdout = registry._holdout(v) if holdout is None else holdout
        model = registry.load(v) if model is None else model
    except Exception as exc:  # said in the card, which is still worth having
        return f"holdout or model could not be read from MLflow ({type(exc).__name__}: {exc})"
    gate = v.tags.get("keel.promotion_metric")
    names = [*m.REPORTED[task], *([gate] if gate in m.METRICS[task] and gate not in m.REPORTED[task] else [])]
    classes = m.classes_of(model) or (json.loads(v.tags["keel.classes"]) if "keel.classes" in v.tags else None)
    return holdout_metrics(model, holdout, features, label, task, names, classes,
                           spec.card.slice if spec is not None else None)


def _runs(registry: Registry, name: str, version: str, kind: str) -> list[dict[str, Any]]:
    """This version's monitoring runs of ``kind`` (drift, performance), newest first, as plain rows."""
    exp = registry.client.get_experiment_by_name(f"keel/{name}/monitoring")
    found = [] if exp is None else registry.client.search_runs(
        [exp.experiment_id], f"tags.`keel.kind` = '{kind}' and tags.`keel.version` = '{version}'",
        order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
    return [{"time": _ms(r.info.start_time), "window": r.data.tags.get("keel.window", ""),
             "run_id": r.info.run_id, "metrics": dict(r.data.metrics)} for r in found]


def build(registry: Registry, name: str, version: str | None = None, spec: Any = None, *,
          model: Any = None, holdout: pd.DataFrame | None = None) -> ModelCard:
    """Gather a version's card (default: the champion, else the latest); ``model`` and ``holdout`` spare
    the downloads when the caller has them in memory (at registration)."""
    v = registry.version(name, str(version).removeprefix("v") if version else default_version(registry, name))
    audit = [r for r in registry.audit.records(name)
             if r.action in AUDIT_ACTIONS or (r.action == "register" and r.to_version == v.version)]
    inputs = CardInputs(name, v.version, dict(v.tags), list(v.aliases), v.created, v.run_id, spec,
                        _holdout(registry, v, spec, model, holdout), _runs(registry, name, v.version, "drift"),
                        _runs(registry, name, v.version, "performance"), audit)
    return render(inputs)


def log(registry: Registry, card: ModelCard) -> ModelCard:
    """Both renderings as artifacts of the version's run under ``card/``; the version tag ``keel.card``
    points at the Markdown."""
    if not card.run_id:
        raise KeelError(f"model '{card.model}' v{card.version} has no MLflow run to log its card to")
    registry.client.log_text(card.run_id, card.markdown, f"{ARTIFACT_DIR}/{MARKDOWN}")
    registry.client.log_text(card.run_id, card.html, f"{ARTIFACT_DIR}/{HTML}")
    uri = f"runs:/{card.run_id}/{ARTIFACT_DIR}/{MARKDOWN}"
    registry.client.set_model_version_tag(card.model, card.version, CARD_TAG, uri)
    return replace(card, uri=uri)


def on_register(registry: Registry, name: str, version: str, model: Any, holdout: pd.DataFrame) -> None:
    """The card of a version just registered. A card is never worth a failed registration: any error is
    a warning, and `keel models card` can write it later."""
    try:
        registry.progress(f"writing the model card of v{version}")
        log(registry, build(registry, name, version, spec_for(registry.settings, name), model=model,
                            holdout=holdout))
    except Exception as exc:  # see the docstring
        logger.warning("model card of '%s' v%s not written (%s: %s); run `keel models card %s %s`",
                       name, version, type(exc).__name__, exc, name, version)


def _ms(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else "unknown"


def fmt(v: Any, name: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{int(v):,}" if name in COUNTS else f"{v:.4f}" if isinstance(v, float) else str(v)


def _intended_use(c: CardInputs) -> list[Block]:
    if c.spec is None:
        return [f"'{c.model}' is not in the project spec (registered without a project, or no keel.yaml was "
                "found): its intended use is not recorded, and its task comes from the version's tag keel.task."]
    return [c.spec.card.intended_use or f"Not stated: add card: {{intended_use: ...}} to model '{c.model}' "
            "in keel.yaml."]


def _task_section(c: CardInputs) -> list[Block]:
    t, spec = c.tags, c.spec
    metric = spec.gate_metric if spec is not None else t.get("keel.promotion_metric", "not recorded")
    override = {"true": True, "false": False}.get(t.get("keel.gate_greater_is_better", ""))
    direction = "higher" if (m.GREATER_IS_BETTER.get(metric, True) if override is None else override) else "lower"
    tolerance = spec.gate.tolerance if spec is not None else t.get("keel.gate_tolerance", "not recorded")
    recorded = ", ".join(f"{k.removeprefix('keel.metric.')}={fmt(float(x))}" for k, x in sorted(t.items())
                         if k.startswith("keel.metric."))
    return [{"task": _task(t, spec) or "not recorded",
             "source": "project spec" if spec is not None else "version tag keel.task (not in the project spec)",
             "label": spec.label if spec is not None else t.get("keel.label") or "not recorded",
             "gate metric": f"{metric} ({direction} is better; tolerance {tolerance})",
             "metrics recorded at registration": recorded or "none",
             "aliases": ", ".join(c.aliases) or "none", "registered": _ms(c.created_ms),
             "MLflow run": c.run_id or "none"}]


def _lineage(c: CardInputs) -> list[Block]:
    tag = {k.removeprefix("keel."): v for k, v in c.tags.items() if v}
    return [{"training window": f"{tag.get('training_window_start', '?')} → {tag.get('training_window_end', '?')}",
             **{label: tag.get(key, "not recorded") for label, key in LINEAGE}}]


def _holdout_section(c: CardInputs) -> list[Block]:
    h = c.holdout
    if isinstance(h, str):
        return [h[:1].upper() + h[1:] + "."]
    blocks: list[Block] = [f"The version's model scored on the holdout stored at registration ({h.rows:,} rows).",
                           Table(["slice", "rows", *h.names], [["all", str(h.rows), *map(fmt, h.overall.values())]])]
    if h.note:
        return [*blocks, h.note[:1].upper() + h.note[1:] + "."]
    shown = (f"the {len(h.slices)} largest of {h.slice_count} values" if h.slice_count > len(h.slices)
             else f"all {h.slice_count} values")
    rows = [[f"{h.slice_column}={value}", str(n), *(fmt(s[k]) for k in h.names)] for value, n, s in h.slices]
    return [*blocks, f"By {h.slice_column} ({shown}):", Table(["slice", "rows", *h.names], rows)]


def _drift(c: CardInputs) -> list[Block]:
    if not c.drift:
        return [f"No drift runs for this version yet (`keel drift run {c.model}`)."]
    rows = [[r["time"], r["window"], fmt(r["metrics"].get("dataset_drift_share")),
             fmt(r["metrics"].get("rows_current"), "rows_current"),
             str(sum(1 for k in r["metrics"] if k.startswith("drift_score."))), r["run_id"]] for r in c.drift]
    return [f"Drift runs of this version, newest first (at most {MAX_RUNS}; share: drifted / compared features).",
            Table(["time", "window", "drift share", "rows compared", "features", "run"], rows)]


def _live(c: CardInputs) -> list[Block]:
    if not c.performance:
        return ["No live performance measured yet: it needs labelled outcomes joined to this version's "
                "predictions (the performance job)."]
    seen = {k for r in c.performance for k in r["metrics"]}
    known = (*LIVE_COUNTS, *m.METRICS.get(_task(c.tags, c.spec) or "", ()), *sorted(m.GREATER_IS_BETTER))
    names = [n for n in dict.fromkeys(known) if n in seen]
    rows = [[r["time"], r["window"], *(fmt(r["metrics"].get(n), n) for n in names), r["run_id"]]
            for r in c.performance]
    return [f"Live performance runs of this version, newest first (at most {MAX_RUNS}).",
            Table(["time", "window", *names, "run"], rows)]


def _audit(c: CardInputs) -> list[Block]:
    if not c.audit:
        return ["No promotions or rollbacks recorded for this model."]
    rows = []
    for r in c.audit:
        moved = " → ".join(f"v{x}" if x else "none" for x in (r.from_version, r.to_version))
        details = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(r.details.items()) if v is not None)
        mark = "yes" if c.version in (r.from_version, r.to_version, str(r.details.get("candidate", ""))) else ""
        rows.append([r.time, r.action, r.actor, f"{r.alias}: {moved}", r.reason or "-", details or "-", mark])
    return [f"Alias changes of '{c.model}' from the audit trail, oldest first ('this' marks v{c.version}).",
            Table(["when", "action", "who", "from → to", "reason", "details", "this"], rows)]


def sections(c: CardInputs) -> list[Section]:
    parts = (_intended_use, _task_section, _lineage, _holdout_section, _drift, _live, _audit)
    return [Section(title, part(c)) for title, part in zip(SECTIONS, parts, strict=True)]


def _md_cell(v: str) -> str:
    return " ".join(str(v).split()).replace("|", "\\|")


def render_markdown(title: str, subtitle: str, secs: list[Section]) -> str:
    out = [f"# {title}", "", subtitle, ""]
    for s in secs:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                out += ["| " + " | ".join(map(_md_cell, b.headers)) + " |",
                        "|" + "---|" * len(b.headers), *("| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows)]
            elif isinstance(b, dict):
                out += [f"- **{k}**: {_md_cell(v)}" for k, v in b.items()]
            else:
                out.append(b)
            out.append("")
    return "\n".join(out)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}table"
         "{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;"
         "font-size:.9rem}th{background:#f3f3f3}dt{font-weight:600}dd{margin:0 0 .4rem 1rem}")


def render_html(title: str, subtitle: str, secs: list[Section]) -> str:
    """One self-contained page (inline style, no scripts, no external assets); every value escaped."""
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>", f"<p>{_e(subtitle)}</p>"]
    for s in secs:
        out.append(f"<section><h2>{_e(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                out.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in b.headers) + "</tr></thead>"
                           "<tbody>" + "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>"
                                               for r in b.rows) + "</tbody></table>")
            elif isinstance(b, dict):
                out.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b.items()) + "</dl>")
            else:
                out.append(f"<p>{_e(b)}</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render(c: CardInputs) -> ModelCard:
    import keel

    title = f"Model card: {c.model} v{c.version}"
    subtitle = (f"Generated {c.generated} by keel {keel.__version__} from the MLflow registry, the audit trail "
                f"and the monitoring runs.")
    secs = sections(c)
    return ModelCard(c.model, c.version, secs, render_markdown(title, subtitle, secs),
                     render_html(title, subtitle, secs), c.run_id)
