"""How a model is saved and loaded: its native MLflow flavor, chosen from its class.

XGBoost models use MLflow's xgboost flavor (a portable, non-pickle format that also loads on a GPU
node); other scikit-learn-compatible models use the sklearn flavor. The flavor is recorded as a tag,
so loaders never guess.
"""

from __future__ import annotations

from typing import Any

FLAVOR_TAG = "keel.flavor"


def flavor_of(model: Any) -> str:
    mod = type(model).__module__
    if mod.startswith("xgboost"):
        return "xgboost"
    return "sklearn"


def requirements(flavor: str) -> list[str]:
    """Pinned from the running environment. Passing them explicitly spares MLflow from inferring them,
    which loads the model in a subprocess and costs seconds per registration."""
    from importlib.metadata import version

    pkgs = ["mlflow", "scikit-learn", "numpy", "pandas", "cloudpickle"]
    if flavor == "xgboost":
        pkgs.append("xgboost")
    return [f"{p}=={version(p)}" for p in pkgs]


def log_model(model: Any, registered_name: str, signature: Any, input_example: Any) -> Any:
    flavor = flavor_of(model)
    common = {"name": "model", "signature": signature, "input_example": input_example,
              "registered_model_name": registered_name, "pip_requirements": requirements(flavor)}
    if flavor == "xgboost":
        import mlflow.xgboost

        return mlflow.xgboost.log_model(model, model_format="ubj", **common)
    import mlflow.sklearn

    predict_fn = "predict_proba" if hasattr(model, "predict_proba") else "predict"
    return mlflow.sklearn.log_model(model, pyfunc_predict_fn=predict_fn, serialization_format="cloudpickle",
                                    **common)


def load_model(uri: str, flavor: str) -> Any:
    """The native model object (with predict_proba where it has one)."""
    if flavor == "xgboost":
        import mlflow.xgboost

        return mlflow.xgboost.load_model(uri)
    import mlflow.sklearn

    return mlflow.sklearn.load_model(uri)
