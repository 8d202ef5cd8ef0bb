"""``POST /v1/feedback``: outcomes into the store, behind the controller's token.

The controller is the one writer of the outcome store, so the duplicate check is exact; what a model is
(task, entity keys, classes) comes from the registry — its champion, else its newest version — cached
for a minute, and the spec's ``performance.match_tolerance_s`` when the project names the model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel.monitoring.outcomes import FeedbackError, FeedbackResult, OutcomeStore


@dataclass(frozen=True)
class ModelFacts:
    task: str
    entity_keys: list[str]
    classes: list[str] | None
    tolerance_s: float


def registry_facts(settings: Any) -> Callable[[str], ModelFacts]:
    """What the registry and the spec say of a model (raises NotFoundError for an unknown one)."""
    from keel.client import Client
    from keel.project import PerformanceSpec
    from keel.registry.client import CLASSES_TAG, TASK_TAG, Registry

    def facts(model: str) -> ModelFacts:
        reg = Registry(settings)
        rm = reg._model(model)
        version = rm.aliases.get("champion")
        if version is None:
            versions = [int(v.version) for v in reg.client.search_model_versions(f"name='{model}'")]
            if not versions:
                raise FeedbackError([f"model: '{model}' has no versions yet; register one first"], 404)
            version = max(versions)
        v = reg.version(model, str(version))
        spec = Client(settings).spec_of(model)
        task = v.tags.get(TASK_TAG) or (spec.task if spec else "binary")
        keys = [k for k in v.tags.get("keel.entity_keys", "").split(",") if k]
        classes = [str(c) for c in json.loads(v.tags[CLASSES_TAG])] if CLASSES_TAG in v.tags else None
        tol = (spec.performance if spec else PerformanceSpec()).match_tolerance_s
        return ModelFacts(task, keys, classes, tol)

    return facts


class Feedback:
    def __init__(self, store: OutcomeStore, facts: Callable[[str], ModelFacts], ttl_s: float = 60.0) -> None:
        self.store, self.facts, self.ttl_s = store, facts, ttl_s
        self._cache: dict[str, tuple[float, ModelFacts]] = {}
        self._lock = threading.Lock()

    def _facts(self, model: str) -> ModelFacts:
        with self._lock:
            hit = self._cache.get(model)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        got = self.facts(model)
        with self._lock:
            self._cache[model] = (time.monotonic(), got)
        return got

    def accept(self, body: Any) -> FeedbackResult:
        if not isinstance(body, dict):
            raise FeedbackError(["body: expected an object {\"model\": NAME, \"outcomes\": [...]}"], 400)
        extra = sorted(set(body) - {"model", "outcomes"})
        if extra:
            raise FeedbackError([f"body.{extra[0]}: unknown field; valid fields: model, outcomes"], 400)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise FeedbackError([f"model: expected a registered model's name (got {model!r})"], 400)
        f = self._facts(model)
        return self.store.record(model, f.task, body.get("outcomes"), f.entity_keys, f.classes, f.tolerance_s)
