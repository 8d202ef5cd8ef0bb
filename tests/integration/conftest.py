"""Real services for integration tests: one local stack per session on free loopback ports, stopped
(and checked stopped) at the end; feature data generated, applied and materialized once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from keel.config import Settings
from keel.stack import Stack
from keel.stack.supervisor import _group_members
from tests.conftest import build_fraud, isolated_settings

DATA_END = datetime(2026, 11, 1, tzinfo=timezone.utc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return isolated_settings(tmp_path_factory.mktemp("stack") / "keel", actor="pytest")


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Stack]:
    st = Stack(stack_settings)
    st.up()
    pgids = st.pgids()
    yield st
    st.down()
    assert not [p for g in pgids for p in _group_members(g)], "services left running after down()"


@pytest.fixture(scope="session")
def feature_data(stack: Stack, stack_settings: Settings) -> dict[str, Path]:
    """Generated fraud data ending at a fixed time, applied to Feast and materialized into Redis."""
    from examples.fraud.fraud_data import GenSpec, generate, write

    from keel.features import store

    paths = write(generate(GenSpec(transactions=20_000, customers=800, merchants=60, days=10, end=DATA_END)),
                  stack_settings.data_dir)
    store.apply(stack_settings)
    store.materialize(stack_settings, end=DATA_END)
    return paths


@pytest.fixture(scope="session")
def training_set(feature_data: dict[str, Path], stack_settings: Settings):

    return build_fraud(stack_settings, "fraud_model_v1", pd.read_parquet(feature_data["transactions"]))


@pytest.fixture(scope="session")
def served_model(training_set, stack_settings: Settings) -> dict[str, str]:
    """'fraud_serve': v1 champion, v2 (a different model) challenger."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.registry.client import Registry

    reg = Registry(stack_settings)
    first = train_fraud_model(training_set)
    v1 = reg.register(first.model, "fraud_serve", training_set, first.holdout, first.metrics)
    reg.promote("fraud_serve")
    second = train_fraud_model(training_set, n_estimators=40, max_depth=2, seed=1)
    v2 = reg.register(second.model, "fraud_serve", training_set, second.holdout, second.metrics)
    return {"name": "fraud_serve", "champion": v1.version, "challenger": v2.version}


@pytest.fixture(scope="session")
def deployer(stack: Stack, stack_settings: Settings) -> Iterator:
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
    yield deploy
    for model in target.specs():
        target.undeploy(model)
