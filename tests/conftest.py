"""Shared test helpers: free loopback ports, isolated keel settings, and running the real CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.config import Settings, load_settings

pytest_plugins = ["tests.kubeapi", "tests.pgdb"]  # the real API server (kcp) and a real Postgres

ROOT = Path(__file__).resolve().parents[1]
FRAUD = ROOT / "examples" / "fraud"  # the example project most integration tests run on
KEEL = str(Path(sys.executable).parent / "keel")
PORT_FIELDS = ("mlflow_port", "redis_port", "prometheus_port", "pushgateway_port", "alertmanager_port",
               "controller_port", "airflow_port", "serving_port")


_HANDED_OUT: set[int] = set()  # every port this test process has given to some stack


def free_block(n: int) -> int:
    """The first of n consecutive free loopback ports (a local Ray cluster: the head's GCS, then one node
    manager per node)."""
    for base in range(31000, 60000, 97):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def free_ports(n: int) -> list[int]:
    """Ports free now and never handed out before in this test process. A stack that was given a port it
    does not bind (no controller without retraining) must not see it go to another stack: its
    Alertmanager would then post its alerts to the other stack's controller."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            ports.append(port)
    for s in socks:
        s.close()
    return ports


def isolated_settings(home: Path, **extra: object) -> Settings:
    """Settings with their own state directory and unused ports, so tests never touch a user's stack."""
    ports = dict(zip(PORT_FIELDS, free_ports(len(PORT_FIELDS)), strict=True))
    extra.setdefault("retraining", False)  # Airflow only where a test asks for it: it costs ~1 GB and 30 s
    extra.setdefault("project", FRAUD)
    return load_settings(home=home, **ports, **extra)


def keel_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update({"KEEL_HOME": str(settings.home), "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"})
    for f in PORT_FIELDS:
        env[f"KEEL_{f.upper()}"] = str(getattr(settings, f))
    env["KEEL_RETRAINING"] = str(settings.retraining).lower()
    if settings.project is not None:
        env["KEEL_PROJECT"] = str(settings.project)
    env["KEEL_START_TIMEOUT"] = str(settings.start_timeout)
    env.update(extra)
    return env


def run_keel(args: list[str], settings: Settings, timeout: float = 300, **extra_env: str
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEEL, *args], env=keel_env(settings, **extra_env), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)


def _leftovers(root: Path) -> list[tuple[int, str]]:
    """Live processes started for this session's tests: their environment or command line names a path
    under the session's temporary root (every stack's KEEL_HOME, Postgres' and kcp's data directories)."""
    needle = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmd or needle in env:
            found.append((int(entry), cmd.replace(b"\0", b" ").decode(errors="replace")[:160]))
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set up first, torn down last: once every other fixture has stopped what it started, nothing the
    tests started may still run. What does is killed (so CI's machine is clean) and fails the run."""
    import signal

    # SIGTERM (CI's timeout, a developer's kill) becomes KeyboardInterrupt, which pytest answers by
    # tearing its fixtures down: the stacks are stopped instead of left behind
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    root = tmp_path_factory.getbasetemp()
    yield
    signal.signal(signal.SIGTERM, previous)
    import time

    deadline = time.monotonic() + 15  # what is exiting right now (a Ray worker finishing its shutdown)
    while (left := _leftovers(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes outlived their fixtures: " + "; ".join(f"{pid} {cmd}" for pid, cmd in left)


@pytest.fixture(autouse=True)
def _no_ambient_keel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a developer's own KEEL_* variables."""
    for k in [k for k in os.environ if k.startswith("KEEL_")]:
        monkeypatch.delenv(k)


@pytest.fixture
def tmp_settings(tmp_path: Path) -> Settings:
    return isolated_settings(tmp_path / "keel")


def build_fraud(settings: Settings, feature_service: str, labels: object, **kw: object):
    """A training set of the fraud example (its label is ``is_fraud``)."""
    from keel.features import training

    kw.setdefault("label", "is_fraud")
    return training.build(settings, feature_service, labels, **kw)  # type: ignore[arg-type]
