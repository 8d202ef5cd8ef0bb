"""keel: glue that makes MLflow, Feast, KServe, Ray Serve, Airflow, Evidently and Prometheus one platform.

Importing keel is cheap on purpose: heavy libraries (mlflow, feast, ray, ...) are imported by the
modules that use them, so the CLI starts fast and a missing extra gives advice, not a traceback.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
