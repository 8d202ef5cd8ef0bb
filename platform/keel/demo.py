"""`make demo`: the platform's main job on the local stack, from raw events to a champion model.

Each step uses the same SDK calls a user or an Airflow task would; the demo only strings them together
and prints what a person wants to see at the end (where to look, what was trained on what).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from keel.config import Settings

Echo = Callable[[str], None]


def run_demo(settings: Settings, transactions: int = 100_000, model: str = "fraud",
             feature_service: str = "fraud_model_v1", echo: Echo = print) -> dict[str, object]:
    from keel.features import store, training
    from keel.features.datagen import GenSpec, generate, write
    from keel.registry.client import Registry
    from keel.stack import Stack
    from keel.train import train_fraud_model

    t0 = time.monotonic()

    def step(msg: str) -> None:
        echo(f"[{time.monotonic() - t0:6.1f}s] {msg}")

    step("starting the local stack (MLflow, Redis, Prometheus, Pushgateway, Alertmanager)")
    Stack(settings).up()
    step(f"generating {transactions:,} labelled transactions and feature snapshots")
    spec = GenSpec(transactions=transactions, customers=max(500, transactions // 20))
    paths = write(generate(spec), settings.data_dir)
    step("applying the Feast feature repo")
    store.apply(settings)
    step("materializing features into Redis (incremental)")
    store.materialize(settings)
    step(f"building a point-in-time training set from feature service '{feature_service}'")
    ts = training.build(settings, feature_service, paths["transactions"])
    step(f"training on {len(ts.frame):,} rows x {len(ts.features)} features (time split)")
    trained = train_fraud_model(ts)
    registry = Registry(settings)
    step("registering in MLflow with lineage (alias 'challenger')")
    v = registry.register(trained.model, model, ts, trained.holdout, trained.metrics, trained.params,
                          reason="make demo")
    step("promotion gate: challenger vs champion on the same holdout")
    gate = registry.gate(model)
    if gate.passed:
        v = registry.promote(model, reason="make demo")
        verdict = f"promoted v{v.version} to champion"
    else:
        verdict = f"gate refused v{v.version}; champion unchanged"
    step(verdict)

    champion = registry.resolve(model, "champion")
    fs = store.open_store(settings)
    sample = ts.frame.iloc[-1]
    online = fs.get_online_features(
        features=store.feature_service(fs, feature_service),
        entity_rows=[{k: int(sample[k]) for k in ts.entity_keys} | {"amount": float(sample["amount"])}],
    ).to_dict()
    lines = [
        "",
        "keel demo: done",
        f"  MLflow UI        {settings.tracking_uri}/#/models/{model}",
        f"  model            {model} v{champion.version} (champion)",
        f"  gate             {gate.metric}: challenger {gate.challenger:.4f} vs champion "
        + (f"{gate.champion:.4f}" if gate.champion is not None else "(none yet)"),
        "  holdout metrics  " + ", ".join(f"{k}={val:.4f}" for k, val in trained.metrics.items()),
        "  lineage",
    ]
    for key in ("feature_service", "feature_views", "feature_definition_hash", "training_window_start",
                "training_window_end", "training_set_hash", "git_sha", "keel_version"):
        lines.append(f"    {key:<24} {champion.tags.get('keel.' + key, '-')}")
    lines += [
        f"  training set     {ts.snapshot}",
        f"  online features  customer {int(sample['customer_id'])}: amount_mean_24h="
        f"{online['amount_mean_24h'][0]}, merchant_fraud_rate_30d={online['merchant_fraud_rate_30d'][0]:.4f}",
        f"  audit            {len(registry.audit.records(model))} records (`keel audit {model}`)",
        "  stop the stack   .venv/bin/keel down",
        f"  took             {time.monotonic() - t0:.1f}s",
    ]
    for line in lines:
        echo(line)
    return {"model": model, "version": champion.version, "gate": gate}
