"""CLI behaviour that needs no services: user errors are one line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import Settings
from tests.conftest import run_keel


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("keel: error: ")
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0]


def test_version_and_help(tmp_settings: Settings) -> None:
    assert run_keel(["--version"], tmp_settings).stdout.strip() == "keel, version 0.1.0"
    assert "promote" in run_keel(["--help"], tmp_settings).stdout


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["status"], {"KEEL_PROFILE": "prod"}, ["'prod'", "KEEL_PROFILE", "'local' or 'cluster'"]),
        (["status"], {"KEEL_MLFLOW_PORT": "x"}, ["KEEL_MLFLOW_PORT"]),
        (["models", "list", "-o", "xml"], {}, ["'xml'", "table", "json", "yaml"]),
        (["logs", "nosuch"], {}, ["unknown service 'nosuch'", "alertmanager, mlflow"]),
        (["up", "nosuch"], {}, ["unknown service 'nosuch'"]),
        (["data", "generate", "--drift", "amount"], {}, ["invalid --drift 'amount'", "FEATURE=FACTOR"]),
        (["data", "generate", "--drift", "bogus=2"], {}, ["unknown feature 'bogus'"]),
        (["data", "generate", "--rows", "0"], {}, ["--rows"]),
        (["nosuchcommand"], {}, ["nosuchcommand"]),
        (["features", "training-set", "fraud", "--labels", "/nonexistent.parquet"], {},
         ["/nonexistent.parquet"]),
        (["features", "training-set", "fraud_model_v1"], {},
         ["unknown model 'fraud_model_v1'", "valid choices: fraud"]),
        (["train", "nosuch"], {}, ["unknown model 'nosuch'", "keel.yaml", "valid choices: fraud"]),
        (["train", "fraud"], {"KEEL_PROJECT": "/nonexistent"},
         ["project spec /nonexistent", "KEEL_PROJECT", "keel.yaml"]),
        (["train", "fraud", "--param", "depth"], {}, ["invalid --param 'depth'", "KEY=VALUE"]),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_settings: Settings, args: list[str], env: dict[str, str],
                                         needles: list[str]) -> None:
    _one_line_error(run_keel(args, tmp_settings, **env), *needles)


def test_services_not_running_is_a_clear_error(tmp_settings: Settings) -> None:
    _one_line_error(run_keel(["models", "list"], tmp_settings), "MLflow tracking server is not reachable",
                    f"127.0.0.1:{tmp_settings.mlflow_port}", "keel up")
    _one_line_error(run_keel(["features", "apply"], tmp_settings), "Redis", "not reachable", "keel up")
    _one_line_error(run_keel(["alerts"], tmp_settings), "Prometheus is not reachable",
                    f"127.0.0.1:{tmp_settings.prometheus_port}")
    _one_line_error(run_keel(["promote", "m"], tmp_settings), "MLflow tracking server is not reachable")


def test_status_of_a_stopped_stack(tmp_settings: Settings) -> None:
    proc = run_keel(["status", "-o", "json"], tmp_settings)
    assert proc.returncode == 0
    assert '"state": "stopped"' in proc.stdout


def test_generate_writes_parquet(tmp_settings: Settings, tmp_path: Path) -> None:
    proc = run_keel(["data", "generate", "--rows", "500", "--end", "2026-11-01", "--out", str(tmp_path)],
                    tmp_settings)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "customer_profile.parquet", "customer_spend.parquet", "merchant_risk.parquet", "transactions.parquet"]
