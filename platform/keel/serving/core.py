"""The predictor core: validate → features → model → response. No web framework in here.

A Predictor is bound to one registered version, resolved from an alias once, at load time; the
version is reported with every answer and never re-resolved per request, so an alias moving in the
registry changes serving only through a deliberate redeploy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keel.config import Settings
from keel.serving import metrics as M
from keel.serving.breaker import STATE_VALUE, CircuitBreaker
from keel.serving.features import OnlineFeatures
from keel.serving.predlog import PredictionLog, now

log = logging.getLogger("keel.serving")


class InputError(ValueError):
    """Bad request content; adapters answer 4xx with ``field`` named."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def body(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


@dataclass
class Result:
    model: str
    version: str
    scores: list[float]
    degraded: list[bool]
    role: str = "primary"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "predictions": self.scores,
                "degraded": any(self.degraded), "degraded_rows": self.degraded, "request_id": self.request_id}


def pick_device(want_gpu: bool) -> str:
    """'cuda' when a GPU was asked for and is present; otherwise 'cpu', saying so when it matters."""
    if not want_gpu:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                                     check=False).returncode == 0:
        return "cuda"
    log.warning("a GPU was requested but none is available; running the model on CPU")
    return "cpu"


class ModelRunner:
    """Calls the native model on a float matrix in the signature's column order, on the chosen device."""

    def __init__(self, model: Any, flavor: str, device: str) -> None:
        self.model, self.flavor, self.device = model, flavor, device
        self._booster = None
        if flavor == "xgboost":
            # one thread per process: requests are small, and OpenMP threads spinning against the
            # server's own threads cost more than they give; replicas are the unit of parallelism
            model.set_params(n_jobs=1)
            if device == "cuda":
                model.set_params(device="cuda")
            booster = model.get_booster()
            if str(booster.attr("objective") or model.get_params().get("objective", "")).startswith("binary:"):
                self._booster = booster  # in-place predict on a float32 matrix: no DMatrix, no pandas pass
        elif flavor == "pytorch":
            model.to(device)
            with contextlib.suppress(NotImplementedError):  # exported (pt2) graphs are inference-only already
                model.eval()

    def scores(self, X: Any) -> np.ndarray:
        if self._booster is not None:
            return np.asarray(self._booster.inplace_predict(X.to_numpy(dtype="float32"), validate_features=False))
        from keel.registry.metrics import scores

        return scores(self.model, X)

    def score_lookup(self, lookup: Any, features: list[str]) -> np.ndarray:
        """Scores straight from the looked-up columns: a float32 matrix for the booster (no DataFrame),
        the DataFrame the model was trained on for everything else."""
        if self._booster is not None:
            return np.asarray(self._booster.inplace_predict(lookup.matrix(features), validate_features=False))
        return self.scores(lookup.frame[features])


class Predictor:
    def __init__(self, name: str, version: str, runner: ModelRunner, online: OnlineFeatures, features: list[str],
                 max_batch: int = 1000, predlog: PredictionLog | None = None, alias: str | None = None) -> None:
        self.name, self.version, self.alias = name, version, alias
        self.runner, self.online, self.features = runner, online, features
        self.max_batch = max_batch
        self.predlog = predlog
        self.online.breaker._on_change = self._breaker_changed
        M.BREAKER.labels(name, version).set(0)
        self._lat = {s: M.LATENCY.labels(name, version, s) for s in ("features", "model", "total")}
        self._batch = M.BATCH.labels(name, version)
        self._codes: dict[str, Any] = {}

    def count(self, code: str, n: int = 1) -> None:
        """Count answered requests by HTTP-equivalent code (label children cached: this is per request)."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = M.REQUESTS.labels(self.name, self.version, code)
        child.inc(n)

    def _breaker_changed(self, state: str) -> None:
        M.BREAKER.labels(self.name, self.version).set(STATE_VALUE[state])
        log.warning("online-store breaker for %s v%s is now %s", self.name, self.version, state)

    @classmethod
    def from_registry(cls, settings: Settings, name: str, alias: str | None = "champion", version: str | None = None,
                      gpu: bool = False, max_batch: int = 1000, predlog: PredictionLog | None = None,
                      cache_ttl_s: float = 0.0, breaker: CircuitBreaker | None = None) -> Predictor:
        from keel.features.store import open_store
        from keel.registry.client import Registry
        from keel.registry.flavors import FLAVOR_TAG

        reg = Registry(settings)
        v = reg.version(name, version) if version else reg.resolve(name, alias or "champion")
        flavor = v.tags.get(FLAVOR_TAG, "sklearn")
        device = pick_device(gpu)
        runner = ModelRunner(reg.load(v), flavor, device)
        stats = reg.feature_stats(v)
        defaults = {k: s.get("default") for k, s in stats.items()}
        store = open_store(settings, serving=True)
        online = OnlineFeatures(store, v.tags["keel.feature_service"], defaults, breaker, cache_ttl_s)
        features = v.tags["keel.features"].split(",")
        log.info("serving %s v%s (alias %s) on %s", name, v.version, alias, device)
        return cls(name, v.version, runner, online, features, max_batch, predlog, alias if not version else None)

    def warmup(self, rounds: int = 3) -> None:
        """Exercise the whole path (Redis connection, Feast registry, on-demand transforms, the model)
        before the server reports ready, so the first real requests do not pay for it or time out."""
        row = {**dict.fromkeys(self.online.entity_keys, 0), **dict.fromkeys(self.online.request_fields, 0.0)}
        for _ in range(rounds):
            lookup = self.online.fetch([row])
            self.runner.score_lookup(lookup, self.features)

    # -- input ----------------------------------------------------------------------------------
    @property
    def input_fields(self) -> list[str]:
        return [*self.online.entity_keys, *self.online.request_fields]

    def validate(self, instances: Any) -> list[dict[str, Any]]:
        if not isinstance(instances, list):
            raise InputError("instances", "expected a list of objects")
        if not instances:
            raise InputError("instances", "expected at least one instance")
        if len(instances) > self.max_batch:
            raise InputError("instances", f"batch of {len(instances)} exceeds the maximum of {self.max_batch}")
        out = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InputError(f"instances[{i}]", f"expected an object with {', '.join(self.input_fields)}")
            row: dict[str, Any] = {}
            for k in self.online.entity_keys:
                v = inst.get(k)
                if v is None:
                    raise InputError(f"instances[{i}].{k}", "missing entity key (expected an integer)")
                if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
                    raise InputError(f"instances[{i}].{k}", f"expected a 64-bit integer, got {v!r}")
                row[k] = v
            for k in self.online.request_fields:
                v = inst.get(k)
                if v is None:
                    raise InputError(f"instances[{i}].{k}", "missing request value (expected a number)")
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise InputError(f"instances[{i}].{k}", f"expected a finite number, got {v!r}")
                row[k] = float(v)
            out.append(row)
        return out

    # -- predict --------------------------------------------------------------------------------
    def predict(self, instances: Any, role: str = "primary", request_id: str | None = None) -> Result:
        t0 = time.perf_counter()
        rows = self.validate(instances)
        lookup = self.online.fetch(rows)
        t1 = time.perf_counter()
        scores = self.runner.score_lookup(lookup, self.features)
        t2 = time.perf_counter()
        n = len(rows)
        if lookup.degraded.any():
            M.FALLBACK.labels(self.name, self.version, lookup.reason or "error").inc(int(lookup.degraded.sum()))
        self._lat["features"].observe(t1 - t0)
        self._lat["model"].observe(t2 - t1)
        self._lat["total"].observe(t2 - t0)
        self._batch.observe(n)
        M.PREDICTIONS.labels(self.name, self.version, role).inc(n)
        result = Result(self.name, self.version, [float(s) for s in scores], lookup.degraded.tolist(), role,
                        request_id or uuid.uuid4().hex)
        if self.predlog is not None and self.predlog.sampled():
            self._log(result, rows, lookup)
        return result

    def _log(self, result: Result, rows: list[dict[str, Any]], lookup: Any) -> None:
        ts = now()
        cols = {f: lookup.columns[f].tolist() for f in self.features}
        recs = []
        for i, row in enumerate(rows):
            recs.append({"request_id": result.request_id, "model": self.name, "version": self.version,
                         "role": result.role, "timestamp": ts, **row, **{f: v[i] for f, v in cols.items()},
                         "prediction": result.scores[i], "degraded": result.degraded[i]})
        before = self.predlog.dropped
        self.predlog.add(recs)
        if self.predlog.dropped > before:
            M.LOG_DROPPED.labels(self.name).inc(self.predlog.dropped - before)
