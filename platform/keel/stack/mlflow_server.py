"""Start ``mlflow server``, first pointing its basic-auth user store at ``$KEEL_MLFLOW_AUTH_DB_URI``.

MLflow reads the auth database URI only from an ini file, and a URI holds a password, so it cannot
live in a ConfigMap: the chart mounts the ini without it and this launcher writes a private copy with
the URI from the environment (a Secret), then replaces itself with MLflow.
"""

from __future__ import annotations

import configparser
import os
import sys
import tempfile
from pathlib import Path


def auth_config(source: str | None, database_uri: str | None, directory: Path) -> str | None:
    """The ini MLflow should read: ``source`` unchanged, or a 0600 copy with ``database_uri`` set."""
    if not source or not database_uri:
        return source
    cfg = configparser.ConfigParser(interpolation=None)
    if not cfg.read(source):
        raise SystemExit(f"mlflow_server: MLFLOW_AUTH_CONFIG_PATH={source} cannot be read")
    cfg["mlflow"]["database_uri"] = database_uri
    fd, path = tempfile.mkstemp(prefix="basic_auth.", suffix=".ini", dir=directory)
    with os.fdopen(fd, "w") as f:
        cfg.write(f)
    return path


def main(argv: list[str] | None = None) -> None:
    path = auth_config(os.environ.get("MLFLOW_AUTH_CONFIG_PATH"), os.environ.get("KEEL_MLFLOW_AUTH_DB_URI"),
                       Path(tempfile.gettempdir()))
    if path:
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = path
    args = sys.argv[1:] if argv is None else argv
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    os.execv(mlflow, [mlflow, "server", *args])


if __name__ == "__main__":
    main()
