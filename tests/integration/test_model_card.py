"""Model cards end to end: a version registered with a slice column in its holdout, promoted, served, its
traffic through the real drift job; then `keel models card` prints a card whose every section holds the
values the registry, the audit trail and the monitoring run really have, and every version registered
here has its card logged to MLflow."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from keel.config import Settings
from tests.conftest import FRAUD, free_ports, run_keel

MODEL = "fraud_card"
INTENDED = "Rank card transactions for manual review <before> settlement & chargebacks."
SLICE = "amount_band"


def _banded(holdout: pd.DataFrame) -> pd.DataFrame:
    """The holdout with a slice column that is neither a feature nor an entity key (kept by the spec)."""
    bands = pd.qcut(holdout["amount"], 3, labels=["small", "medium", "large"]).astype(str)
    return holdout.assign(**{SLICE: bands})


@pytest.fixture(scope="module")
def card_settings(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session stack with a project spec that names MODEL with an intended use and a slice column."""
    root = tmp_path_factory.mktemp("card_project")
    model = {"feature_service": "fraud_model_v1", "label": "is_fraud", "task": "binary",
             "labels": "${KEEL_HOME}/data/transactions.parquet", "train": "fraud_model:train_fraud_model",
             "gate": {"metric": "roc_auc", "tolerance": 0.0}, "card": {"intended_use": INTENDED, "slice": SLICE}}
    (root / "keel.yaml").write_text(yaml.safe_dump({"name": "cards", "feature_repo": str(FRAUD / "feature_repo"),
                                                    "models": {MODEL: model}}))
    return stack_settings.model_copy(update={"project": root / "keel.yaml"})


def test_model_card_holds_every_section_with_real_values(training_set: Any, stack_settings: Settings,
                                                         card_settings: Settings, deployer: Any,
                                                         tmp_path: Path) -> None:
    from examples.fraud.fraud_model import train_fraud_model
    from mlflow.tracking import MlflowClient

    from keel.monitoring import drift
    from keel.monitoring.inject import replay
    from keel.registry import metrics as m
    from keel.registry.client import Registry
    from keel.serving.predlog import read
    from keel.train import time_split

    reg = Registry(card_settings)
    first = train_fraud_model(training_set, n_estimators=60)
    v1 = reg.register(first.model, MODEL, training_set, _banded(first.holdout), first.metrics, reason="card v1")
    reg.promote(MODEL, reason="card test promotion")
    second = train_fraud_model(training_set, n_estimators=40, max_depth=2, seed=1)
    v2 = reg.register(second.model, MODEL, training_set, _banded(second.holdout), second.metrics)

    # served traffic (one drifted feature), then the real drift job on it
    (port,) = free_ports(1)
    url = deployer(model=MODEL, port=port)

    def send(instances: list[dict[str, Any]]) -> dict[str, Any]:
        req = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict",
                                     data=json.dumps({"instances": instances}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    rows = time_split(training_set.frame)[1].sample(n=300, random_state=3)
    sent = replay(stack_settings, MODEL, rows, {"txn_count_24h": 4.0}, send, entity_base=9_500_000)
    deployer.target.undeploy(MODEL)  # a graceful stop flushes the prediction log (sooner than its 10 s timer)
    deadline = time.monotonic() + 30
    while len(read(str(stack_settings.home / "predictions"), MODEL)) < sent:
        assert time.monotonic() < deadline, "the prediction log was not flushed in 30 s"
        time.sleep(1.0)
    result = drift.run(card_settings, MODEL, "1h", push=False)

    html_path = tmp_path / "card.html"
    proc = run_keel(["models", "card", MODEL, "--html", str(html_path)], card_settings)
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert md.startswith(f"# Model card: {MODEL} v{v1.version}\n"), md[:200]  # the champion by default
    for title in ("Intended use", "Task", "Training data and lineage", "Holdout metrics", "Drift history",
                  "Live performance", "Promotions and rollbacks"):
        assert f"\n## {title}\n" in md and f"<h2>{title}</h2>" in html_path.read_text()

    # intended use and task, from the spec
    assert INTENDED in md and "- **task**: binary" in md and "- **source**: project spec" in md
    assert "- **gate metric**: roc_auc (higher is better; tolerance 0.0)" in md
    assert "Rank card transactions for manual review &lt;before&gt; settlement &amp; chargebacks." in \
        html_path.read_text()

    # lineage, from the version's tags
    t = reg.version(MODEL, v1.version).tags
    assert f"- **training window**: {t['keel.training_window_start']} → {t['keel.training_window_end']}" in md
    for key in ("feature_service", "feature_views", "training_set_hash", "git_sha", "keel_version"):
        assert t[f"keel.{key}"] and t[f"keel.{key}"] in md, key

    # holdout metrics: the stored holdout (slice column kept) scored with the version's own model
    stored = reg._holdout(v1)
    assert SLICE in stored.columns
    feats, label = t["keel.features"].split(","), t["keel.label"]
    out = m.scores(reg.load(v1), stored[feats], "binary")
    names = list(m.REPORTED["binary"])

    def row(name: str, mask: Any) -> str:
        got = m.evaluate("binary", stored.loc[mask, label].to_numpy(), out[mask.to_numpy()], names=names)
        return f"| {name} | {int(mask.sum())} | " + " | ".join(f"{got[n]:.4f}" for n in names) + " |"

    assert f"| slice | rows | {' | '.join(names)} |" in md
    assert row("all", stored[label].notna()) in md
    for band in ("small", "medium", "large"):
        assert row(f"{SLICE}={band}", stored[SLICE] == band) in md, band

    # drift history: the run the job logged
    assert f"| {result.drift_share:.4f} | {result.current_rows:,} | {len(result.features)} | {result.run_id} |" in md
    assert result.drift_share > 0 and result.current_rows == sent
    assert "No live performance measured yet" in md

    # promotions and rollbacks: the promotion's audit record
    (promo,) = [r for r in reg.audit.records(MODEL) if r.action == "promote"]
    assert promo.actor == "pytest" and promo.to_version == v1.version
    assert f"| {promo.time} | promote | pytest | champion: none → v{v1.version} | card test promotion |" in md

    # every version registered here has its card in MLflow, tagged on the version
    client = MlflowClient(card_settings.tracking_uri)
    for v in (v1, v2):
        mv = client.get_model_version(MODEL, v.version)
        assert {a.path for a in client.list_artifacts(mv.run_id, "card")} == {"card/model_card.md",
                                                                               "card/model_card.html"}
        assert mv.tags["keel.card"] == f"runs:/{mv.run_id}/card/model_card.md"
    logged = Path(client.download_artifacts(v2.run_id, "card/model_card.md", str(tmp_path))).read_text()
    assert logged.startswith(f"# Model card: {MODEL} v{v2.version}\n") and f"| {SLICE}=small |" in logged
    assert "No drift runs for this version yet" in logged  # written at registration, before any traffic

    bad = run_keel(["models", "card", MODEL, "99"], card_settings)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert f"unknown version '99' of model '{MODEL}'; valid choices: {v1.version}, {v2.version}" in bad.stderr
