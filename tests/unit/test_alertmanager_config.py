"""The Alertmanager configuration keel writes: valid for amtool, drift to the controller and to people."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from keel.stack.services import _alertmanager_config
from tests.conftest import isolated_settings

AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    if not Path(AMTOOL).exists():
        pytest.skip("amtool not installed (apt package prometheus-alertmanager; `make setup` installs it)")
    s = isolated_settings(tmp_path / "keel")
    path = tmp_path / "alertmanager.yml"
    path.write_text(_alertmanager_config(s))
    token = s.home / "alertmanager" / "controller.token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) >= 32
    assert token.read_text() not in path.read_text()
    assert f"{s.controller_url}/v1/alerts" in path.read_text()
    return path


def _amtool(*args: str) -> str:
    proc = subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_config_passes_amtool(config: Path) -> None:
    assert "SUCCESS" in _amtool("check-config", str(config))


@pytest.mark.parametrize(("labels", "receivers"), [
    (["alertname=KeelDatasetDrift", "category=drift", "model=fraud"], "keel-controller,default"),
    (["alertname=KeelModelPerformanceDecay", "category=performance", "model=fraud"], "keel-controller,default"),
    (["alertname=KeelLatencyP99High", "category=serving", "model=fraud"], "default"),
])
def test_drift_alerts_reach_the_controller_and_the_rest_go_to_people(config: Path, labels: list[str],
                                                                      receivers: str) -> None:
    assert _amtool("config", "routes", "test", f"--config.file={config}", *labels) == receivers
