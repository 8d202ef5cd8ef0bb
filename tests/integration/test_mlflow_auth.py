"""The chart's MLflow basic-auth setup on a real MLflow server: the rendered chart's command, arguments, env
and ``basic_auth.ini`` (only paths, ports and Secret values swapped for local ones), both stores on a real
Postgres as the chart runs them, then keel's own registry client through it."""

from __future__ import annotations

import base64
import configparser
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.infra.probes import http_ok, wait_until
from keel.registry.client import Registry
from keel.stack.supervisor import _group_members
from tests.conftest import ROOT, free_ports, isolated_settings, run_keel
from tests.pgdb import database, rows

CHART = ROOT / "charts" / "keel"
HELM = shutil.which("helm") or str(ROOT / ".keel" / "bin" / "helm")
SEARCH = "/api/2.0/mlflow/registered-models/search"
# what the chart must wire for basic auth; everything else in its env is taken as rendered
AUTH_ENV = {"MLFLOW_AUTH_CONFIG_PATH", "KEEL_MLFLOW_AUTH_DB_URI", "MLFLOW_AUTH_ADMIN_USERNAME",
            "MLFLOW_AUTH_ADMIN_PASSWORD"}


@dataclass(frozen=True)
class AuthServer:
    url: str
    port: int
    user: str
    password: str
    ini: Path  # the chart's basic_auth.ini, as the ConfigMap mounts it
    auth_db: str  # the database KEEL_MLFLOW_AUTH_DB_URI names (on Postgres, as the chart runs it)
    tmpdir: Path  # the launcher's TMPDIR (its private ini copy lands here)
    log: Path


def _render(tmp: Path) -> list[dict[str, Any]]:
    env = {"HELM_CACHE_HOME": str(tmp / "c"), "HELM_CONFIG_HOME": str(tmp / "g"), "HELM_DATA_HOME": str(tmp / "d"),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([HELM, "template", "keel", str(CHART), "--namespace", "ml"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} rendered {len(found)} times"
    return found[0]


def _chart_env(container: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """The container's env as a pod would see it: literal values, a fresh random value for each Secret key
    (any Secret the chart adds later is filled the same way), and local stand-ins for paths and databases."""
    env: dict[str, str] = {}
    for item in container["env"]:
        name = item["name"]
        if name in overrides:
            env[name] = overrides[name]
        elif "value" in item:
            env[name] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[name] = secrets.token_urlsafe(24)
        else:
            raise AssertionError(f"unexpected env source in the chart: {item}")
    return env


def _chart_args(container: dict[str, Any], overrides: dict[str, str]) -> list[str]:
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={overrides[flag]}" if flag in overrides else arg)
    return args


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (the launcher became `mlflow server`, which runs uvicorn workers),
    wait, SIGKILL what is left, and check nothing of it survives."""
    pgid = proc.pid
    if proc.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
    if not wait_until(lambda: not _group_members(pgid), timeout=15):
        os.killpg(pgid, signal.SIGKILL)
        raise AssertionError(f"MLflow processes {_group_members(pgid)} outlived SIGTERM")


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, postgres: str) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    docs = _render(tmp / "helm")
    ini = tmp / "basic_auth.ini"
    ini.write_text(_one(docs, "ConfigMap", "keel-mlflow-auth")["data"]["basic_auth.ini"])
    container = _one(docs, "Deployment", "keel-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "keel.stack.mlflow_server"]
    assert "--app-name=basic-auth" in container["args"]
    assert {e["name"] for e in container["env"]} >= AUTH_ENV, "the chart does not wire MLflow basic auth"

    (port,) = free_ports(1)
    user, password = "admin", secrets.token_urlsafe(18)  # MLflow refuses admin passwords under 12 characters
    # both stores on Postgres in the chart's URI form (keel.dbEnv): postgresql+psycopg://...
    mlflow_db, auth_db = database(postgres, "mlflow_chart"), database(postgres, "mlflow_auth")
    tmpdir, log = tmp / "tmp", tmp / "mlflow.log"
    tmpdir.mkdir()
    args = _chart_args(container, {
        "--host": "127.0.0.1", "--port": str(port), "--workers": "1",
        "--backend-store-uri": mlflow_db, "--artifacts-destination": str(tmp / "artifacts"),
        "--allowed-hosts": f"127.0.0.1,127.0.0.1:{port},localhost",
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "MLFLOW_"))}
    env.update(_chart_env(container, {
        "KEEL_MLFLOW_DB_URI": mlflow_db,
        "KEEL_MLFLOW_AUTH_DB_URI": auth_db,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
    }))
    env.update(TMPDIR=str(tmpdir), PYTHONWARNINGS="ignore")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "keel.stack.mlflow_server", *args], env=env, cwd=tmp,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: http_ok(f"{url}/health"), timeout=180, interval=0.5,
                          alive=lambda: proc.poll() is None):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            pytest.fail(f"MLflow with the chart's auth setup did not become healthy (exit code {proc.poll()}):\n{tail}")
        yield AuthServer(url, port, user, password, ini, auth_db, tmpdir, log)
    finally:
        _stop_group(proc)


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registry sets MLflow's process-wide tracking URI (and MLFLOW_TRACKING_URI); put both back."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    saved = utils._tracking_uri
    yield
    utils.set_tracking_uri(saved)


def test_rest_api_needs_the_admin_credentials(auth_server: AuthServer) -> None:
    api = auth_server.url + SEARCH
    assert _status(api) == 401
    assert _status(api, (auth_server.user, "not-" + auth_server.password)) == 401
    assert _status(api, ("nobody", auth_server.password)) == 401
    assert _status(api, (auth_server.user, auth_server.password)) == 200
    # /health stays open: the chart's readiness and liveness probes send no credentials
    assert _status(auth_server.url + "/health") == 200


def test_launcher_points_the_user_store_at_the_database_from_the_secret(auth_server: AuthServer) -> None:
    users = [r[0] for r in rows(auth_server.auth_db, "SELECT username FROM users")]
    assert users == [auth_server.user], "the admin was not created in the database KEEL_MLFLOW_AUTH_DB_URI names"
    assert "database_uri = sqlite:////data/basic_auth.db" in auth_server.ini.read_text()  # the mount is untouched
    (copy,) = auth_server.tmpdir.glob("basic_auth.*.ini")
    assert copy.stat().st_mode & 0o777 == 0o600
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(copy)
    assert cfg["mlflow"]["database_uri"] == auth_server.auth_db
    assert cfg["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert auth_server.password not in copy.read_text()


def test_keel_registry_works_through_auth(auth_server: AuthServer, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    reg = Registry(isolated_settings(tmp_path / "k", mlflow_uri=auth_server.url))
    name = f"auth_probe_{secrets.token_hex(3)}"
    reg.client.create_registered_model(name)  # a write, not only a read, goes through
    listed = {m["name"]: m for m in reg.models()}
    assert listed[name]["versions"] == 0 and listed[name]["champion"] is None
    assert name in reg.model_names()


@pytest.mark.parametrize("password", [None, "wrong-password-123"])
def test_keel_registry_without_valid_credentials_fails(auth_server: AuthServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, password: str | None) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    reg = Registry(isolated_settings(tmp_path / "k", mlflow_uri=auth_server.url))
    started = time.monotonic()
    # keel passes MLflow's own error through (not a KeelError): its message names the 401 and the cause
    with pytest.raises(MlflowException, match=r"401 != 200.*You are not authenticated"):
        reg.models()
    assert time.monotonic() - started < 30, "a 401 must not be retried for long"


def test_cli_without_credentials_is_one_clear_line(auth_server: AuthServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    settings = isolated_settings(tmp_path / "k", mlflow_uri=auth_server.url)
    proc = run_keel(["models", "list"], settings, timeout=120, KEEL_MLFLOW_URI=auth_server.url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("keel: error: ") and proc.stderr.strip().count("\n") == 0
    assert "authent" in proc.stderr.lower() or "401" in proc.stderr
