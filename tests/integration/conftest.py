"""Real services for integration tests: one local stack per session on free loopback ports, stopped
(and checked stopped) at the end; feature data generated, applied and materialized once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from keel.config import Settings
from keel.stack import Stack
from keel.stack.supervisor import _group_members
from tests.conftest import build_fraud, free_ports, isolated_settings
from tests.once import Once

DATA_END = datetime(2026, 11, 1, tzinfo=timezone.utc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return isolated_settings(tmp_path_factory.mktemp("stack") / "keel", actor="pytest")


@pytest.fixture(scope="session")
def once() -> Once:
    return Once()


@pytest.fixture(scope="session")
def session_stack(stack_settings: Settings) -> Iterator[Stack]:
    """The one stack of the session, stopped (and checked stopped) at its end, even after a failure."""
    st = Stack(stack_settings)
    try:
        yield st
    finally:
        pgids = st.pgids()
        st.down()
        assert not [p for g in pgids for p in _group_members(g)], "services left running after down()"


@pytest.fixture(scope="module")
def stack(session_stack: Stack) -> Stack:
    """The session stack, up: each module asks again (idempotent, and quick when everything is healthy),
    so a service that failed to start fails that module, not the rest of the run."""
    session_stack.up()
    return session_stack


def _feature_data(settings: Settings) -> dict[str, Path]:
    from examples.fraud.fraud_data import GenSpec, generate, write

    from keel.features import store

    paths = write(generate(GenSpec(transactions=20_000, customers=800, merchants=60, days=10, end=DATA_END)),
                  settings.data_dir)
    store.apply(settings)
    store.materialize(settings, end=DATA_END)
    return paths


@pytest.fixture(scope="module")
def feature_data(stack: Stack, stack_settings: Settings, once: Once) -> dict[str, Path]:
    """Generated fraud data ending at a fixed time, applied to Feast and materialized into Redis (once)."""
    return once.get("feature_data", lambda: _feature_data(stack_settings))


@pytest.fixture(scope="module")
def training_set(feature_data: dict[str, Path], stack_settings: Settings, once: Once):
    return once.get("training_set", lambda: build_fraud(stack_settings, "fraud_model_v1",
                                                          pd.read_parquet(feature_data["transactions"])))


def _served_model(training_set: Any, settings: Settings) -> dict[str, str]:
    from examples.fraud.fraud_model import train_fraud_model

    from keel.registry.client import Registry

    reg = Registry(settings)
    first = train_fraud_model(training_set)
    v1 = reg.register(first.model, "fraud_serve", training_set, first.holdout, first.metrics)
    reg.promote("fraud_serve")
    second = train_fraud_model(training_set, n_estimators=40, max_depth=2, seed=1)
    v2 = reg.register(second.model, "fraud_serve", training_set, second.holdout, second.metrics)
    return {"name": "fraud_serve", "champion": v1.version, "challenger": v2.version}


@pytest.fixture(scope="module")
def served_model(training_set: Any, stack_settings: Settings, once: Once) -> dict[str, str]:
    """'fraud_serve': v1 champion, v2 (a different model) challenger."""
    return once.get("served_model", lambda: _served_model(training_set, stack_settings))


@pytest.fixture(scope="session")
def deployer(session_stack: Stack, stack_settings: Settings) -> Iterator:
    """Deploy a ServeSpec as a real local serving process; everything deployed is undeployed at the end."""
    from keel.serving.deploy import LocalTarget
    from keel.serving.spec import ServeSpec

    target = LocalTarget(stack_settings)
    deployed: list[str] = []

    def deploy(**kw: object) -> str:
        spec = ServeSpec(**kw)
        target.deploy(spec)
        deployed.append(spec.model)
        return f"http://127.0.0.1:{spec.port}"

    deploy.target = target  # type: ignore[attr-defined]
    try:
        yield deploy
    finally:
        for model in target.specs():
            target.undeploy(model)


@pytest.fixture(scope="module")
def controller(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The real controller app (the session stack runs none: no Airflow here) for its /v1/feedback endpoint,
    on a free port; shut down even if a test fails."""
    from keel.controller.airflow import Airflow
    from keel.controller.app import Controller, serve
    from keel.controller.feedback import Feedback, registry_facts
    from keel.controller.queue import TriggerQueue
    from keel.monitoring.outcomes import OutcomeStore

    (port,) = free_ports(1)
    s = stack_settings.model_copy(update={"controller_port": port})
    queue = TriggerQueue(tmp_path_factory.mktemp("ctl") / "triggers.db", 0.0)
    ctl = Controller(queue, Airflow("http://127.0.0.1:9", "keel", lambda: "x"), s.audit(),
                     feedback=Feedback(OutcomeStore(s.outcomes_location, s.predictions_location), registry_facts(s)))
    server = serve(ctl, "127.0.0.1", port, s.token())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()
        queue.close()
