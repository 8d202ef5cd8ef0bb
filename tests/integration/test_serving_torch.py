"""A small torch model through the same registry and predictor core; CPU here, CUDA where present."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from keel.config import Settings
from keel.features.training import TrainingSet
from keel.registry.client import Registry
from keel.serving.core import Predictor
from keel.train import time_split

torch = pytest.importorskip("torch")


class FraudMLP(torch.nn.Module):
    """Standardises its raw inputs itself (training mean/std as buffers), so serving sends raw features."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.net = torch.nn.Sequential(torch.nn.Linear(len(mean), 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((x - self.mean) / self.std)).squeeze(-1)


def test_torch_model_registers_and_serves(training_set: TrainingSet, stack_settings: Settings,
                                          caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    feats = training_set.features
    train, holdout = time_split(training_set.frame)
    X = np.nan_to_num(train[feats].to_numpy("float32"))
    y = train["is_fraud"].to_numpy("float32")
    model = FraudMLP(X.mean(0), X.std(0) + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()

    reg = Registry(stack_settings)
    v = reg.register(model, "fraud_torch", training_set, holdout)
    assert v.tags["keel.flavor"] == "pytorch"
    assert v.metrics["roc_auc"] > 0.7  # it learned something
    reg.promote("fraud_torch")

    with caplog.at_level(logging.WARNING, logger="keel.serving"):
        p = Predictor.from_registry(stack_settings, "fraud_torch", gpu=True)
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert p.runner.device == expected_device
    if expected_device == "cpu":
        assert "a GPU was requested but none is available; running the model on CPU" in caplog.text

    instances = [{"customer_id": c, "merchant_id": c % 60, "amount": 20.0 + c} for c in range(10)]
    got = p.predict(instances)
    frame = p.online.fetch(p.validate(instances)).frame[feats]
    with torch.no_grad():
        direct = model(torch.as_tensor(np.nan_to_num(frame.to_numpy("float32")))).numpy()
    np.testing.assert_allclose(got.scores, direct, atol=1e-6)
    assert got.version == v.version and not any(got.degraded)
