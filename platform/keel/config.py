"""One typed settings object. Every ``KEEL_*`` variable is a field here and nowhere else.

Precedence (highest first): keyword overrides, ``KEEL_*`` environment variables, the YAML file named
by ``KEEL_CONFIG``, the profile's defaults. Two profiles exist: ``local`` (every service on
127.0.0.1, state under ``.keel/``) and ``cluster`` (in-cluster service names from the Helm release).
"""

from __future__ import annotations

import contextlib
import getpass
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keel.errors import KeelError

ENV_PREFIX = "KEEL_"
CONFIG_ENV = "KEEL_CONFIG"
PROJECT_ROOT = Path(__file__).resolve().parents[2]

Profile = Literal["local", "cluster"]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def ray_host_port(address: str) -> tuple[str, str]:
    """(host, port) of a Ray cluster address, ``host:port`` or ``ray://host:port``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host, port


class Settings(BaseSettings):
    """Where keel's services are and how keel behaves. Field docs are the variables' docs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)
    _spec: Any = PrivateAttr(None)
    _spec_of: Any = PrivateAttr(None)  # the project it was read for: a model_copy with another keeps none

    profile: Profile = Field("local", description="local: services on loopback; cluster: in-cluster names")
    home: Path = Field(Path(".keel"), description="state directory (databases, logs, pids, data)")
    host: str = Field("127.0.0.1", description="address local services bind to")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server port")
    redis_port: int = Field(6379, ge=1, le=65535, description="Redis (Feast online store) port")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus port")
    pushgateway_port: int = Field(9091, ge=1, le=65535, description="Prometheus Pushgateway port")
    alertmanager_port: int = Field(9093, ge=1, le=65535, description="Alertmanager port")
    controller_port: int = Field(8087, ge=1, le=65535, description="keel controller (alert webhook) port")
    airflow_port: int = Field(8080, ge=1, le=65535, description="Airflow API server port (local stack)")
    serving_port: int = Field(8085, ge=1, le=65535, description="first port for local model deployments")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; derived from profile when unset")
    redis_address: str | None = Field(None, description="Redis host:port (Redis Cluster: startup nodes "
                                      "host:port,host:port,...); derived from profile when unset")
    redis_type: Literal["redis", "redis_cluster"] = Field(
        "redis", description="the online store: one Redis, or a Redis Cluster (Feast's redis_type, used where a "
        "repo's feature_store.yaml does not name one)")
    pushgateway: str | None = Field(None, description="Pushgateway URL; derived from profile when unset")
    redis_password: SecretStr | None = Field(None, description="Redis password (cluster: from a Secret)")
    feast_registry: SecretStr | None = Field(
        None, description="Feast registry: an SQLAlchemy URI (cluster: Postgres) or a file; default: file in home")
    deploy_target: Literal["local", "cluster", "kserve", "rayserve"] = Field(
        "local", description="where retraining rollouts deploy: the local stack, or through the Kubernetes "
        "API the release's InferenceServices (kserve), RayServices (rayserve), or each model's own runtime "
        "from the spec (cluster)")
    mlflow_db_uri: SecretStr | None = Field(
        None, description="local stack: SQLAlchemy URI of MLflow's backend store (e.g. postgresql+psycopg://user:"
        "pass@host:5432/mlflow, as the chart runs it); default: SQLite in KEEL_HOME/mlflow")
    database: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="local stack: where MLflow's backend store, Feast's registry and the audit "
        "records live: SQLite and files in KEEL_HOME (zero setup), or a local Postgres that `keel up` starts "
        "(one database each, as the chart runs them); an explicit KEEL_MLFLOW_DB_URI, KEEL_FEAST_REGISTRY or "
        "KEEL_AUDIT_DB still wins")
    postgres_port: int = Field(5442, ge=1, le=65535, description="local Postgres (KEEL_DATABASE=postgres): the "
                               "port its Unix socket is named by (it opens no TCP port)")
    audit_db: SecretStr | None = Field(
        None, description="SQLAlchemy URI of the database audit records go to (cluster: the platform's "
        "Postgres); default: KEEL_HOME/audit.jsonl")
    snapshot_uri: str | None = Field(
        None, description="where training-set snapshots go: a directory or an fsspec URI shared by every "
        "pod (a ReadWriteMany volume, s3://...); default: KEEL_HOME/training_sets")
    outcomes_uri: str | None = Field(
        None, description="where outcomes sent with `keel feedback` are stored, as parquet partitions: a "
        "directory or an fsspec URI (the artifact store on a cluster); default: KEEL_HOME/outcomes")
    predictions_uri: str | None = Field(
        None, description="the prediction log the controller resolves outcomes against and the performance job "
        "reads (a directory or an fsspec URI); default: KEEL_HOME/predictions")
    serving_endpoint: str | None = Field(
        None, description="base URL of a model's server for cluster smoke checks, '{name}' and '{namespace}' "
        "filled in; default: the in-cluster Service KServe or KubeRay creates")
    release: str = Field("keel", description="Helm release name (cluster profile service names)")
    fullname: str | None = Field(None, description="the release's object-name prefix (the chart's fullname); "
                                 "default: the release name if it contains 'keel', else '<release>-keel'")
    namespace: str = Field("keel", description="Kubernetes namespace (cluster profile service names)")
    project: Path | None = Field(
        None, description="project spec (keel.yaml, or its directory); default: keel.yaml in the working "
                          "directory or a parent")
    feature_repo: Path | None = Field(None, description="Feast repository directory; default: the project spec's")
    controller_token: SecretStr | None = Field(
        None, description="bearer token of the keel controller; local default: KEEL_HOME/controller/token")
    airflow_url: str | None = Field(None, description="Airflow API URL; derived from profile when unset")
    airflow_username: str = Field("keel", description="Airflow user the controller triggers DAG runs as")
    airflow_password: SecretStr | None = Field(
        None, description="its password; local default: the password file Airflow's simple auth manager writes")
    retraining: bool = Field(True, description="`keel up` also starts Airflow and the keel controller")
    retrain_cooldown_s: float = Field(600.0, ge=0, description="seconds after a retrain before another for a model")
    promotion_metric: str = Field("roc_auc", description="holdout metric the promotion gate compares")
    promotion_tolerance: float = Field(0.0, ge=0.0, description="how much worse a challenger may be")
    actor: str = Field(default_factory=_default_actor, description="who is recorded in audit records")
    feature_timeout_ms: float = Field(100.0, gt=0, description="serving: online-store call timeout")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="serving and feature server: the largest request "
                                "body accepted (413 beyond it, before anything is parsed)")
    start_timeout: float = Field(90.0, gt=0, description="seconds to wait for a service to become healthy")
    ray_workers: int = Field(0, ge=0, le=16, description="local stack: Ray worker nodes `keel up` starts beside a "
                             "Ray head (a multi-node Ray cluster on loopback); 0: none")
    ray_port: int = Field(6380, ge=1, le=65000, description="local Ray head's GCS port (node managers on the next "
                          "ports)")
    ray_worker_cpus: int = Field(1, ge=1, description="CPUs each local Ray worker node offers")
    ray_object_store_mb: int = Field(256, ge=80, description="object store of each local Ray node, MiB")
    ray_serve_port: int = Field(8480, ge=1, le=65535, description="the shared Ray cluster's Serve HTTP port: every "
                                "model deployed with the Ray runtime on it answers there under /<model>")
    ray_address: str | None = Field(None, description="Ray cluster for batch scoring, training and the Ray "
                                    "serving runtime (host:port or ray://...; on Kubernetes the KubeRay "
                                    "cluster's head); default: the local head when KEEL_RAY_WORKERS > 0, else "
                                    "none (in-process)")
    rayjob_template: Path | None = Field(None, description="cluster: the RayJob the chart renders (mounted in the "
                                         "DAG step pods); a model with training.ray then trains as a RayJob")
    rayjob_timeout_s: float = Field(6 * 3600.0, gt=0, description="how long a train step waits for its RayJob")

    @field_validator("home", "feature_repo", "project")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()

    def spec(self) -> Any:
        """The project spec (keel.project.ProjectSpec) these settings point at, read once."""
        if self._spec is None or self._spec_of != self.project:
            from keel import project

            self._spec = project.load(self.project) if self.project else project.load()
            self._spec_of = self.project
        return self._spec

    @property
    def repo(self) -> Path:
        """The Feast repository: KEEL_FEATURE_REPO, else the project spec's ``feature_repo``."""
        if self.feature_repo is not None:
            return self.feature_repo
        return Path(self.spec().feature_repo)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    # -- derived locations -------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """What the chart names this release's objects with (its ``keel.fullname`` helper)."""
        if self.fullname:
            return self.fullname
        return self.release if "keel" in self.release else f"{self.release}-keel"

    @property
    def listen_host(self) -> str:
        """Where keel's own servers listen: loopback locally (KEEL_HOST); every interface only in a pod,
        where the Service and NetworkPolicies, not the bind address, decide who reaches them."""
        return "0.0.0.0" if self.profile == "cluster" else self.host

    def _svc(self, name: str, port: int) -> str:
        return f"{self.prefix}-{name}.{self.namespace}.svc.cluster.local:{port}"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        if self.profile == "cluster":
            return f"http://{self._svc('mlflow', 5000)}"
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def ray_cluster(self) -> str | None:
        """The Ray cluster batch scoring, training and the Ray serving runtime use, if any."""
        if self.ray_address:
            return self.ray_address
        return f"{self.host}:{self.ray_port}" if self.ray_workers > 0 and self.profile == "local" else None

    @property
    def ray_serve_host(self) -> str:
        """Where the shared Ray cluster's Serve proxy listens: its head (the proxy runs there only)."""
        if not self.ray_address:
            return self.host
        return ray_host_port(self.ray_address)[0] or self.host

    def _local_db(self, name: str) -> str | None:
        if self.database != "postgres" or self.profile != "local":
            return None
        from keel.stack import postgres

        return postgres.uri(self, name)

    @property
    def mlflow_backend_uri(self) -> str:
        """MLflow's backend store on the local stack: KEEL_MLFLOW_DB_URI, else the local Postgres's or SQLite."""
        if self.mlflow_db_uri:
            return self.mlflow_db_uri.get_secret_value()
        return self._local_db("mlflow") or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def feast_registry_uri(self) -> str:
        """Feast's registry: KEEL_FEAST_REGISTRY, else the local Postgres's database; "" for the file."""
        if self.feast_registry:
            return self.feast_registry.get_secret_value()
        return self._local_db("feast") or ""

    @property
    def audit_db_uri(self) -> str | None:
        """The audit records' database: KEEL_AUDIT_DB, else the local Postgres's; None for the JSONL file."""
        if self.audit_db:
            return self.audit_db.get_secret_value()
        return self._local_db("audit")

    @property
    def redis_connection(self) -> str:
        """Feast's redis connection string: host:port[,password=...]."""
        if self.redis_address:
            addr = self.redis_address
        elif self.profile == "cluster":
            addr = self._svc("redis", 6379)
        else:
            addr = f"{self.host}:{self.redis_port}"
        if self.redis_password is not None:
            addr += f",password={self.redis_password.get_secret_value()}"
        return addr

    @property
    def prometheus_url(self) -> str:
        if self.profile == "cluster":
            return f"http://{self._svc('prometheus', 9090)}"
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def pushgateway_url(self) -> str:
        if self.pushgateway:
            return self.pushgateway
        if self.profile == "cluster":
            return f"http://{self._svc('pushgateway', 9091)}"
        return f"http://{self.host}:{self.pushgateway_port}"

    @property
    def controller_url(self) -> str:
        if self.profile == "cluster":
            return f"http://{self._svc('controller', 8087)}"
        return f"http://{self.host}:{self.controller_port}"

    @property
    def airflow_api(self) -> str:
        if self.airflow_url:
            return self.airflow_url.rstrip("/")
        if self.profile == "cluster":
            return f"http://{self.release}-airflow-api-server.{self.namespace}.svc.cluster.local:8080"
        return f"http://{self.host}:{self.airflow_port}"

    def token(self) -> str:
        """The controller's bearer token: the setting, or (local) a 0600 file made on first use."""
        if self.controller_token is not None:
            return self.controller_token.get_secret_value()
        path = self.home / "controller" / "token"
        if not path.exists():
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def airflow_secret(self) -> str:
        if self.airflow_password is not None:
            return self.airflow_password.get_secret_value()
        path = self.home / "airflow" / "simple_auth_manager_passwords.json.generated"
        if not path.exists():
            raise KeelError(f"no Airflow password: set KEEL_AIRFLOW_PASSWORD, or start Airflow with `keel up` "
                            f"(it writes {path})")
        import json

        return str(json.loads(path.read_text())[self.airflow_username])

    @property
    def alertmanager_url(self) -> str:
        if self.profile == "cluster":
            return f"http://{self._svc('alertmanager', 9093)}"
        return f"http://{self.host}:{self.alertmanager_port}"

    def as_env(self) -> dict[str, str]:
        """These settings as KEEL_* variables, for child processes (serving, DAG tasks) to load the same."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        if self.project is None:  # children run elsewhere: hand them the spec this process found
            with contextlib.suppress(KeelError):  # no spec anywhere: the children find none either
                out[f"{ENV_PREFIX}PROJECT"] = str(self.spec().path)
        return out

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def outcomes_location(self) -> str:
        return self.outcomes_uri or str(self.home / "outcomes")

    @property
    def predictions_location(self) -> str:
        return self.predictions_uri or str(self.home / "predictions")

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.jsonl"

    def audit(self) -> Any:
        """The audit log these settings name (keel.registry.audit): the database of KEEL_AUDIT_DB, shared
        by every pod of a release, else the local JSONL file."""
        from keel.registry.audit import open_audit

        return open_audit(self)


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by KEEL_CONFIG; errors name the file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_ENV)
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise KeelError(f"{CONFIG_ENV}={path}: file not found") from exc
        except yaml.YAMLError as exc:
            raise KeelError(f"{CONFIG_ENV}={path}: not valid YAML ({exc.__class__.__name__})") from exc
        if not isinstance(data, dict):
            raise KeelError(f"{CONFIG_ENV}={path}: expected a mapping of settings, got {type(data).__name__}")
        return data


def _describe(err: dict[str, Any]) -> str:
    field = str(err["loc"][0]) if err.get("loc") else "?"
    where = f"{ENV_PREFIX}{field.upper()}"
    if os.environ.get(CONFIG_ENV) and f"{ENV_PREFIX}{field.upper()}" not in os.environ:
        where = f"{where} (or '{field}' in {os.environ[CONFIG_ENV]})"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(Settings.model_fields))
        return f"unknown setting '{field}' in {os.environ.get(CONFIG_ENV, 'settings')}; valid settings: {valid}"
    expected = err.get("msg", "invalid")
    if err["type"] == "literal_error":
        expected = "expected one of " + err["ctx"]["expected"]
    return f"invalid value {value!r} for {where}: {expected}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one readable KeelError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise KeelError("; ".join(_describe(e) for e in exc.errors())) from None


def describe_variables() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every KEEL_* setting, for `keel config --list`."""
    rows = [(CONFIG_ENV, "", "YAML file with settings (same names, lower case)")]
    for name, field in Settings.model_fields.items():
        default = "" if field.default_factory else str(field.default)
        rows.append((f"{ENV_PREFIX}{name.upper()}", default, field.description or ""))
    return rows
