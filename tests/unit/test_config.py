from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import Settings, describe_variables, load_settings
from keel.errors import KeelError


def test_local_profile_binds_everything_to_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KEEL_CONFIG", raising=False)
    s = load_settings(home=tmp_path, mlflow_port=5123, redis_port=6400)
    assert s.tracking_uri == "http://127.0.0.1:5123"
    assert s.redis_connection == "127.0.0.1:6400"
    assert s.home == tmp_path.resolve()
    assert s.audit_log == tmp_path.resolve() / "audit.jsonl"


def test_cluster_profile_uses_in_cluster_service_names() -> None:
    s = load_settings(profile="cluster", release="prod", namespace="ml")  # the chart's fullname: prod-keel
    assert s.tracking_uri == "http://prod-keel-mlflow.ml.svc.cluster.local:5000"
    assert s.redis_connection == "prod-keel-redis.ml.svc.cluster.local:6379"
    assert s.pushgateway_url == "http://prod-keel-pushgateway.ml.svc.cluster.local:9091"
    assert load_settings(profile="cluster", release="keel-prod").tracking_uri.startswith("http://keel-prod-mlflow.")
    assert load_settings(profile="cluster", release="prod", fullname="ml").tracking_uri.startswith("http://ml-mlflow.")


def test_explicit_uris_win_and_password_is_secret() -> None:
    s = load_settings(profile="cluster", mlflow_uri="http://mlflow:80", redis_address="r:1", redis_password="pw")
    assert s.tracking_uri == "http://mlflow:80"
    assert s.redis_connection == "r:1,password=pw"
    assert "pw" not in repr(s)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_MLFLOW_PORT", "5999")
    monkeypatch.setenv("KEEL_PROMOTION_TOLERANCE", "0.01")
    s = load_settings()
    assert s.mlflow_port == 5999 and s.promotion_tolerance == 0.01


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("KEEL_PROFILE", "prod", "invalid value 'prod' for KEEL_PROFILE: expected one of 'local' or 'cluster'"),
        ("KEEL_MLFLOW_PORT", "http", "invalid value 'http' for KEEL_MLFLOW_PORT"),
        ("KEEL_REDIS_PORT", "70000", "invalid value '70000' for KEEL_REDIS_PORT"),
        ("KEEL_PROMOTION_TOLERANCE", "-1", "KEEL_PROMOTION_TOLERANCE"),
    ],
)
def test_bad_variable_names_the_variable_and_valid_values(monkeypatch: pytest.MonkeyPatch, var: str, value: str,
                                                          expected: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(KeelError) as err:
        load_settings()
    assert expected in str(err.value)


def test_yaml_file_is_read_and_env_overrides_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "keel.yaml"
    cfg.write_text("mlflow_port: 5100\nredis_port: 6500\n")
    monkeypatch.setenv("KEEL_CONFIG", str(cfg))
    monkeypatch.setenv("KEEL_REDIS_PORT", "6501")
    s = load_settings()
    assert (s.mlflow_port, s.redis_port) == (5100, 6501)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("mlflow_prot: 5100\n", "unknown setting 'mlflow_prot'"),
        ("profile: moon\n", "invalid value 'moon' for KEEL_PROFILE (or 'profile' in"),
        ("- a\n- b\n", "expected a mapping of settings"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_file_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str,
                                      expected: str) -> None:
    cfg = tmp_path / "keel.yaml"
    cfg.write_text(content)
    monkeypatch.setenv("KEEL_CONFIG", str(cfg))
    with pytest.raises(KeelError) as err:
        load_settings()
    assert expected in str(err.value)


def test_missing_yaml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEEL_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(KeelError, match=r"nope\.yaml: file not found"):
        load_settings()


def test_every_setting_is_a_documented_keel_variable() -> None:
    rows = describe_variables()
    names = {r[0] for r in rows}
    assert {f"KEEL_{f.upper()}" for f in Settings.model_fields} <= names
    assert all(r[2] for r in rows), "every variable needs a description"


def test_every_local_service_keeps_its_state_in_its_own_home(tmp_path: Path) -> None:
    """Two stacks on one machine share nothing on disk: no service falls back to a machine-wide default
    (Debian's Pushgateway persists to /var/lib/prometheus/pushgateway.data unless told otherwise, which
    sent one stack's drift metrics, and alerts, into the next stack started)."""
    from keel.stack.services import build_services, retraining_services

    s = load_settings(home=tmp_path / "keel")
    services = [*build_services(s).values(), *retraining_services(s)]
    push = next(x for x in services if x.name == "pushgateway")
    assert f"--persistence.file={s.home / 'pushgateway.data'}" in push.command
    for svc in services:
        for arg in svc.command:
            assert "/var/lib" not in arg, (svc.name, arg)
