"""How a model is saved and loaded: its native MLflow flavor, chosen from its class.

XGBoost models use MLflow's xgboost flavor (a portable, non-pickle format that also loads on a GPU
node); LightGBM its own; other scikit-learn-compatible models use the sklearn flavor. keel records the
flavor as a tag, so loaders never guess; a version registered without keel is read from its MLmodel
file (``detect``), natively where keel knows the flavor, else as a generic pyfunc model.
"""

from __future__ import annotations

from typing import Any

FLAVOR_TAG = "keel.flavor"


def flavor_of(model: Any) -> str:
    mod = type(model).__module__
    if mod.startswith("xgboost"):
        return "xgboost"
    if mod.startswith("lightgbm"):
        return "lightgbm"
    if _is_torch(model):
        return "pytorch"
    return "sklearn"


def _is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def requirements(flavor: str) -> list[str]:
    """Pinned from the running environment. Passing them explicitly spares MLflow from inferring them,
    which loads the model in a subprocess and costs seconds per registration."""
    from importlib.metadata import version

    pkgs = ["mlflow", "scikit-learn", "numpy", "pandas", "cloudpickle"]
    if flavor in ("xgboost", "pytorch", "lightgbm"):
        pkgs.append({"pytorch": "torch"}.get(flavor, flavor))
    return [f"{p}=={version(p)}" for p in pkgs]


def log_model(model: Any, registered_name: str, signature: Any, input_example: Any) -> Any:
    flavor = flavor_of(model)
    common = {"name": "model", "signature": signature, "input_example": input_example,
              "registered_model_name": registered_name, "pip_requirements": requirements(flavor)}
    if flavor == "xgboost":
        import mlflow.xgboost

        return mlflow.xgboost.log_model(model, model_format="ubj", **common)
    if flavor == "lightgbm":
        import mlflow.lightgbm

        return mlflow.lightgbm.log_model(model, **common)
    if flavor == "pytorch":
        import mlflow.pytorch
        import numpy as np

        # pt2: a traced graph, not a pickle, so loading needs none of the training code; tracing needs
        # a numeric example (nulls as 0, as at scoring time)
        common["input_example"] = np.nan_to_num(np.asarray(input_example, dtype="float32"))
        common["signature"] = None
        model.cpu()
        return mlflow.pytorch.log_model(model, serialization_format="pt2", **common)
    import mlflow.sklearn

    predict_fn = "predict_proba" if hasattr(model, "predict_proba") else "predict"
    return mlflow.sklearn.log_model(model, pyfunc_predict_fn=predict_fn, serialization_format="cloudpickle",
                                    **common)


def load_model(uri: str, flavor: str) -> Any:
    """The native model object (with predict_proba where it has one; a torch module for pytorch)."""
    if flavor == "pytorch":
        import mlflow.pytorch

        loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
        # a pt2 model loads as an ExportedProgram; its .module() is the callable nn.Module
        return loaded.module() if hasattr(loaded, "graph_signature") and hasattr(loaded, "module") else loaded
    if flavor == "xgboost":
        import mlflow.xgboost

        return mlflow.xgboost.load_model(uri)
    if flavor == "lightgbm":
        import mlflow.lightgbm

        return mlflow.lightgbm.load_model(uri)
    if flavor == "pyfunc":
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(uri)
    import mlflow.sklearn

    return mlflow.sklearn.load_model(uri)


NATIVE = ("xgboost", "lightgbm", "sklearn", "pytorch")


def detect(uri: str) -> str:
    """The flavor to load a version with, from its MLmodel file: the first native flavor keel knows,
    else ``pyfunc`` (every MLflow model has it)."""
    from mlflow.models import get_model_info

    flavors = get_model_info(uri).flavors
    return next((f for f in NATIVE if f in flavors), "pyfunc")
