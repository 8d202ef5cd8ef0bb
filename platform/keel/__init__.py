"""keel: glue that makes MLflow, Feast, KServe, Ray Serve, Airflow, Evidently and Prometheus one platform.

The SDK, in the style of MLflow's fluent API over its explicit client::

    import keel

    ts = keel.training_set("my_model")                      # point-in-time, from keel.yaml
    trained = my_train(ts)                                  # your code
    keel.register(trained.model, "my_model", training_set=ts, holdout=trained.holdout)
    keel.promote("my_model")                                # gated on the same holdout, audited
    keel.deploy("my_model")                                 # serves the champion, features looked up
    keel.predict("my_model", [{"user_id": "u1"}])

Each call goes to a default ``keel.Client`` (settings from ``KEEL_*``, the project from ``keel.yaml``);
make a ``keel.Client(settings, project)`` for explicit control. Importing keel is cheap on purpose: heavy
libraries (mlflow, feast, ray, ...) are imported by the calls that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from keel.client import Client

_default: Client | None = None


def get_client() -> Client:
    """The default client, made on first use (``keel.client`` is the module that defines ``Client``)."""
    global _default
    if _default is None:
        from keel.client import Client

        _default = Client()
    return _default


def training_set(model: str | None = None, **kw: Any) -> Any:
    """A point-in-time training set for ``model`` (see ``Client.training_set``)."""
    return get_client().training_set(model, **kw)


def register(model: Any, name: str, **kw: Any) -> Any:
    """Register a trained model as ``name``'s challenger, with lineage (see ``Client.register``)."""
    return get_client().register(model, name, **kw)


def train(model: str, **kw: Any) -> Any:
    """Training set → the spec's training function → register (see ``Client.train``)."""
    return get_client().train(model, **kw)


def promote(model: str, **kw: Any) -> Any:
    """Challenger → champion through the gate (see ``Client.promote``)."""
    return get_client().promote(model, **kw)


def rollback(model: str, **kw: Any) -> Any:
    """Champion → the previous champion (see ``Client.rollback``)."""
    return get_client().rollback(model, **kw)


def deploy(model: str, alias: str = "champion", **kw: Any) -> Any:
    """Serve an alias's version on the local stack (see ``Client.deploy``)."""
    return get_client().deploy(model, alias, **kw)


def predict(model: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Score instances with a deployment (see ``Client.predict``)."""
    return get_client().predict(model, instances)


def drift(model: str, **kw: Any) -> Any:
    """Run the drift job for a model (see ``Client.drift``)."""
    return get_client().drift(model, **kw)


def feedback(model: str, outcomes: Any) -> Any:
    """Send real outcomes for a model's predictions (see ``Client.feedback``)."""
    return get_client().feedback(model, outcomes)


def performance(model: str, **kw: Any) -> Any:
    """Run the performance job for a model (see ``Client.performance``)."""
    return get_client().performance(model, **kw)


def card(model: str, version: str | None = None, **kw: Any) -> Any:
    """Regenerate and log a version's model card (see ``Client.card``)."""
    return get_client().card(model, version, **kw)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from keel.client import Client

        return Client
    raise AttributeError(f"module 'keel' has no attribute {name!r}")


__all__ = ["Client", "__version__", "card", "deploy", "drift", "feedback", "get_client", "performance", "predict",
           "promote", "register", "rollback", "train", "training_set"]
