"""The retraining pipeline's steps, called by the Airflow DAG (dags/keel_retrain.py) in the core venv
locally, or as ``python -m keel.retrain <step>`` in a pod on a cluster: one code path for both.

Every step is idempotent per DAG run: registering uses the run id as the idempotency key, promotion is
skipped when the run's version is already champion, and a rollout redeploys to the same end state.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any

from keel.config import Settings, load_settings
from keel.errors import GateRefusedError, KeelError

DEFAULTS = {"feature_service": "fraud_model_v1", "train": "keel.train:train_fraud_model", "params": {},
            "canary_percent": 10, "smoke_requests": 20, "labels": None}


def validate_conf(conf: dict[str, Any] | None) -> dict[str, Any]:
    """The run's conf merged over the defaults, each value checked, with an error naming the bad one."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(DEFAULTS) - {"reason", "trigger"})
    if unknown:
        raise KeelError(f"unknown conf key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(DEFAULTS))}, "
                        f"reason, trigger")
    out = {**DEFAULTS, **conf}
    pct = out["canary_percent"]
    if not isinstance(pct, int | float) or isinstance(pct, bool) or not 0 <= pct <= 100:
        raise KeelError(f"conf canary_percent={pct!r}: expected a number from 0 to 100")
    n = out["smoke_requests"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise KeelError(f"conf smoke_requests={n!r}: expected a positive integer")
    if not isinstance(out["params"], dict):
        raise KeelError(f"conf params={out['params']!r}: expected an object of keyword arguments for the entry point")
    if not isinstance(out["train"], str) or ":" not in out["train"]:
        raise KeelError(f"conf train={out['train']!r}: expected 'module:function'")
    return out


def _entry_point(spec: str) -> Any:
    module, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise KeelError(f"training entry point '{spec}' cannot be loaded ({exc})") from None


def train(settings: Settings, model: str, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Point-in-time training set -> the model's entry point -> registered as challenger (once per run)."""
    from keel.features import training
    from keel.registry.client import Registry

    conf = validate_conf(conf)
    registry = Registry(settings)
    labels = conf["labels"] or settings.data_dir / "transactions.parquet"
    ts = training.build(settings, conf["feature_service"], labels)
    trained = _entry_point(conf["train"])(ts, **conf["params"])
    v = registry.register(trained.model, model, ts, trained.holdout, trained.metrics, trained.params,
                          idempotency_key=run_id, reason=f"retrain {run_id}: {conf.get('reason', '')}".strip(),
                          actor="airflow")
    return {"version": v.version, "training_set_hash": ts.snapshot_hash, "rows": len(ts.frame)}


def gate(settings: Settings, model: str, run_id: str, version: str) -> dict[str, Any]:
    """Promote the run's version if the gate passes; a refusal leaves the champion untouched."""
    from keel.registry.client import Registry

    registry = Registry(settings)
    before = registry.resolve(model, "champion").version if "champion" in registry._model(model).aliases else None
    if before == version:  # a re-run after a successful promotion
        return {"promoted": True, "previous": _previous(registry, model, version), "champion": version}
    challenger = registry.resolve(model, "challenger").version
    if challenger != version:
        raise KeelError(f"challenger of '{model}' is v{challenger}, not this run's v{version}: another run "
                        f"registered since; not promoting")
    try:
        v = registry.promote(model, reason=f"retrain {run_id}", actor="airflow")
    except GateRefusedError as exc:
        return {"promoted": False, "previous": before, "champion": before, "refused": str(exc)}
    return {"promoted": True, "previous": before, "champion": v.version}


def _previous(registry: Any, model: str, version: str) -> str | None:
    history = registry._history(model)
    return history[-2] if len(history) >= 2 and history[-1] == version else None


def rollout(settings: Settings, model: str, run_id: str, decision: dict[str, Any],
            conf: dict[str, Any]) -> dict[str, Any]:
    """Canary (the previous version keeps most traffic, the new champion gets canary_percent), a smoke
    check through the real endpoint, then the new champion alone. A failed smoke check rolls back."""
    from keel.registry.client import Registry
    from keel.serving.deploy import LocalTarget, predict_local
    from keel.serving.spec import ServeSpec

    conf = validate_conf(conf)
    if not decision.get("promoted"):
        return {"outcome": "refused", "champion": decision.get("champion")}
    target = LocalTarget(settings)
    current = target.specs().get(model)
    if current is None:
        return {"outcome": "promoted", "champion": decision["champion"], "deployed": False}
    registry = Registry(settings)
    new, old = decision["champion"], decision.get("previous")
    base = {"runtime": current.runtime, "port": current.port, "predlog_uri": current.predlog_uri,
            "sample_rate": current.sample_rate}
    if old and old != new and conf["canary_percent"] > 0:
        target.deploy(ServeSpec(model=model, version=old, canary_alias="champion",
                                canary_weight=conf["canary_percent"] / 100.0, **base))
    ok, detail = _smoke(settings, model, conf["smoke_requests"], predict_local)
    if not ok:
        registry.rollback(model, reason=f"retrain {run_id}: smoke check failed ({detail})", actor="airflow")
        target.deploy(ServeSpec(model=model, alias="champion", **base))
        return {"outcome": "rolled_back", "champion": old, "smoke": detail}
    target.deploy(ServeSpec(model=model, alias="champion", **base))
    first = predict_local(settings, model, _smoke_instances(settings, 1))
    return {"outcome": "promoted", "champion": new, "deployed": True, "first_prediction_version": first["version"],
            "first_prediction_at": time.time()}


def _smoke_instances(settings: Settings, n: int) -> list[dict[str, Any]]:
    import pandas as pd

    events = pd.read_parquet(settings.data_dir / "transactions.parquet", columns=["customer_id", "merchant_id",
                                                                                  "amount"]).tail(n)
    return [{"customer_id": int(r.customer_id), "merchant_id": int(r.merchant_id), "amount": float(r.amount)}
            for r in events.itertuples()]


def _smoke(settings: Settings, model: str, n: int, predict: Any) -> tuple[bool, str]:
    try:
        out = predict(settings, model, _smoke_instances(settings, n))
    except KeelError as exc:
        return False, str(exc)
    scores = out.get("predictions", [])
    if len(scores) != n or any(not 0.0 <= float(s) <= 1.0 for s in scores):
        return False, f"{len(scores)} answers for {n} requests, or scores outside [0, 1]"
    return True, f"{n} answers"


def main(argv: list[str] | None = None) -> int:
    """``python -m keel.retrain STEP --model M --run-id R [--conf JSON] [--input JSON]`` (cluster pods)."""
    ap = argparse.ArgumentParser(prog="keel.retrain")
    ap.add_argument("step", choices=["validate", "train", "gate", "rollout"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--conf", default="{}")
    ap.add_argument("--input", default="{}", help="the previous step's output")
    ap.add_argument("--xcom", action="store_true", help="also write the result where KubernetesPodOperator reads it")
    a = ap.parse_args(argv)
    s, conf, prev = load_settings(), json.loads(a.conf), json.loads(a.input)
    steps = {"validate": lambda: validate_conf(conf), "train": lambda: train(s, a.model, a.run_id, conf),
             "gate": lambda: gate(s, a.model, a.run_id, prev["version"]),
             "rollout": lambda: rollout(s, a.model, a.run_id, prev, conf)}
    out = json.dumps(steps[a.step]())
    if a.xcom:
        from pathlib import Path

        Path("/airflow/xcom").mkdir(parents=True, exist_ok=True)
        Path("/airflow/xcom/return.json").write_text(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
