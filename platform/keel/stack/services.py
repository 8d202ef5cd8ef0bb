"""What each local service is: its command, port, config files and health check.

Adding a service (later issues add serving, the controller and Airflow) means adding one Service here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keel.config import PROJECT_ROOT, Settings
from keel.errors import KeelError


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    url: str
    command: list[str]
    health: str  # "http:<path>", "redis" or "ray" (a Ray node: port open and joined)
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None  # writes config files before start
    cleanup: Callable[[], None] | None = None  # removes what it kept outside KEEL_HOME, once stopped
    # the port is its own, free before it starts; not so for a model on the shared Ray cluster's Serve
    # proxy, nor for Postgres (a Unix socket named by the port)
    own_port: bool = True
    stop_signal: int = signal.SIGTERM  # what asks it to stop cleanly


def _binary(name: str, apt_package: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        raise KeelError(f"'{name}' is not installed; run `make setup` (apt package {apt_package})")
    return found


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def _prometheus_config(s: Settings) -> str:
    rules_dir = PROJECT_ROOT / "monitoring" / "rules"
    return f"""# Written by `keel up`; edits are overwritten.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - {rules_dir}/*.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{s.host}:{s.alertmanager_port}"]
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["{s.host}:{s.prometheus_port}"]
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["{s.host}:{s.pushgateway_port}"]
  - job_name: keel-controller
    static_configs:
      - targets: ["{s.host}:{s.controller_port}"]
  - job_name: keel
    file_sd_configs:
      - files: ["{s.home}/prometheus/targets/*.json"]
"""


def _alertmanager_config(s: Settings) -> str:
    """monitoring/alertmanager.yml with the local controller's URL and token file filled in."""
    token = s.home / "alertmanager" / "controller.token"  # what Alertmanager presents; 0600, never logged
    token.parent.mkdir(parents=True, exist_ok=True)
    token.touch(mode=0o600)
    token.write_text(s.token())
    text = (PROJECT_ROOT / "monitoring" / "alertmanager.yml").read_text()
    text = text.replace("__CONTROLLER_URL__", s.controller_url).replace("__CONTROLLER_TOKEN_FILE__", str(token))
    return "# Written by `keel up` from monitoring/alertmanager.yml; edits are overwritten.\n" + text


def build_services(s: Settings) -> dict[str, Service]:
    """The local services in start order."""
    home = s.home
    h = s.host

    def mlflow_prepare() -> None:
        (home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)

    def prom_prepare() -> None:
        (home / "prometheus" / "targets").mkdir(parents=True, exist_ok=True)
        (home / "prometheus" / "data").mkdir(parents=True, exist_ok=True)
        (home / "prometheus" / "prometheus.yml").write_text(_prometheus_config(s))

    def am_prepare() -> None:
        (home / "alertmanager" / "data").mkdir(parents=True, exist_ok=True)
        (home / "alertmanager" / "alertmanager.yml").write_text(_alertmanager_config(s))

    def redis_prepare() -> None:
        (home / "redis").mkdir(parents=True, exist_ok=True)

    services = [
        Service(
            "mlflow",
            s.mlflow_port,
            f"http://{h}:{s.mlflow_port}",
            [
                _venv_bin("mlflow"), "server",
                "--artifacts-destination", str(home / "mlflow" / "artifacts"),
                "--host", h, "--port", str(s.mlflow_port), "--workers", "1",
                "--allowed-hosts", f"{h},{h}:{s.mlflow_port},localhost,localhost:{s.mlflow_port}",
            ],
            "http:/health",
            env={
                # the store's URI from the environment, not argv: a database URI holds a password, and
                # every local user can read a process's command line
                "MLFLOW_BACKEND_STORE_URI": s.mlflow_backend_uri,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
            },
            prepare=mlflow_prepare,
        ),
        Service(
            "redis",
            s.redis_port,
            f"redis://{h}:{s.redis_port}",
            [
                "redis-server", "--bind", h, "--port", str(s.redis_port),
                # an RDB snapshot on shutdown (and every minute when written to): materialized
                # features survive `keel down` / `keel up`
                "--dir", str(home / "redis"), "--save", "60 1", "--appendonly", "no",
                "--protected-mode", "yes", "--daemonize", "no",
            ],
            "redis",
            prepare=redis_prepare,
        ),
        Service(
            "prometheus",
            s.prometheus_port,
            f"http://{h}:{s.prometheus_port}",
            [
                "prometheus", f"--config.file={home / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'prometheus' / 'data'}",
                f"--web.listen-address={h}:{s.prometheus_port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=7d",
            ],
            "http:/-/ready",
            prepare=prom_prepare,
        ),
        Service(
            "pushgateway",
            s.pushgateway_port,
            f"http://{h}:{s.pushgateway_port}",
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: one file for every
            # stack on the machine, so one stack's pushed drift metrics came back in another's (and fired
            # its alerts). Each stack keeps its own, in its home.
            ["prometheus-pushgateway", f"--web.listen-address={h}:{s.pushgateway_port}",
             f"--persistence.file={home / 'pushgateway.data'}"],
            "http:/-/ready",
        ),
        Service(
            "alertmanager",
            s.alertmanager_port,
            f"http://{h}:{s.alertmanager_port}",
            [
                "prometheus-alertmanager", f"--config.file={home / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={home / 'alertmanager' / 'data'}",
                f"--web.listen-address={h}:{s.alertmanager_port}", "--cluster.listen-address=",
            ],
            "http:/-/ready",
            prepare=am_prepare,
        ),
    ]
    if s.retraining:
        services += retraining_services(s)
    from keel.stack.ray_cluster import ray_services

    services += ray_services(s)[0]
    if s.database == "postgres":  # first: MLflow, the controller and every deployment keep data in it
        from keel.stack import postgres

        services.insert(0, postgres.service(s))
    return {svc.name: svc for svc in services}


def seed_airflow_password(path: Path, username: str) -> None:
    """Write the local Airflow user's password (0600) before Airflow starts. Airflow's simple auth manager
    generates one for a user its file lacks and prints it to its log; with the user already there it
    prints nothing, and keel (``Settings.airflow_secret``) reads the same file."""
    import json
    import secrets

    existing: dict[str, str] = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text() or "{}")
        except ValueError:
            existing = {}
    if username not in existing:
        existing[username] = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(existing) + "\n")
    os.chmod(path, 0o600)  # a file an earlier Airflow wrote 0644


def write_airflow_shim(path: Path, airflow: Path) -> None:
    """An ``airflow`` that starts the scheduler and triggerer with ``--skip-serve-logs``. Their log servers
    bind every interface (host hard-coded in Airflow's ``serve_logs``) and `airflow standalone` offers no
    switch; locally the API server reads task logs from the same disk, so nothing needs them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    real = shlex.quote(str(airflow))
    path.write_text("#!/bin/sh\n# written by keel (keel.stack.services.write_airflow_shim)\n"
                    f'case "$1" in scheduler|triggerer) exec {real} "$@" --skip-serve-logs ;; esac\n'
                    f'exec {real} "$@"\n')
    path.chmod(0o700)


def retraining_services(s: Settings) -> list[Service]:
    """Airflow (standalone, its own venv, loopback, modest parallelism) and the keel controller."""
    home, h = s.home, s.host
    airflow_venv = PROJECT_ROOT / ".venv-airflow" / "bin"

    def airflow_prepare() -> None:
        (home / "airflow").mkdir(parents=True, exist_ok=True)
        seed_airflow_password(home / "airflow" / "simple_auth_manager_passwords.json.generated", s.airflow_username)
        write_airflow_shim(home / "airflow" / "bin" / "airflow", airflow_venv / "airflow")

    airflow_env = {
        **s.as_env(),
        # the shim first: `airflow standalone` starts its components as `airflow <component>` from PATH
        "PATH": f"{home / 'airflow' / 'bin'}:{airflow_venv}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{s.airflow_username}:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{h}:{s.airflow_port}/execution/",
        "AIRFLOW__API__HOST": h,
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(s.airflow_port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(s.airflow_port + 2),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "KEEL_CORE_PYTHON": sys.executable,
        "NO_PROXY": "*",
    }
    return [
        Service("airflow", s.airflow_port, f"http://{h}:{s.airflow_port}",
                [str(airflow_venv / "airflow"), "standalone"], "http:/api/v2/monitor/health", env=airflow_env,
                prepare=airflow_prepare),
        Service("controller", s.controller_port, f"http://{h}:{s.controller_port}",
                [_venv_bin("keel"), "controller", "--host", h, "--port", str(s.controller_port)], "http:/healthz",
                env={**s.as_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}),
    ]


DEPLOYMENT_PREFIX = "serve-"


def deployment_services(s: Settings) -> dict[str, Service]:
    """Local model deployments (`keel deploy --target local`), one process each, from their saved specs."""
    from keel.serving.spec import ServeSpec

    out: dict[str, Service] = {}
    for path in sorted((s.home / "deployments").glob("*.json")):
        spec = ServeSpec.from_json(path.read_text())
        module = f"keel.serving.{spec.runtime}_runtime"
        health = "http:/v2/health/ready" if spec.runtime == "kserve" else "http:/healthz"
        name = DEPLOYMENT_PREFIX + spec.model
        out[name] = Service(name, spec.port, spec.base_url(s),
                            [sys.executable, "-m", module, "--spec", spec.to_json(), "--host", s.host], health,
                            env={"RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", **s.as_env()},
                            own_port=not spec.route_prefix)
    return out


SERVICE_NAMES = ("mlflow", "redis", "prometheus", "pushgateway", "alertmanager")

_APT = {
    "redis-server": "redis-server",
    "prometheus": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


def resolve_binary(command: list[str]) -> list[str]:
    """Resolve system binaries to absolute paths, with install advice when missing."""
    head = command[0]
    if head in _APT:
        return [_binary(head, _APT[head]), *command[1:]]
    return command
