"""The session stack's fixtures: a setup that fails errors the module that asked for it, and the next
module tries again (run as a real pytest session on two modules, as the suite uses them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
import pytest
from tests.once import Once

starts = []

@pytest.fixture(scope="session")
def once():
    return Once()

@pytest.fixture(scope="module")
def service(once):
    def start():
        starts.append(1)
        if len(starts) == 1:
            raise RuntimeError("mlflow failed to start (not healthy after 90s)")
        return "healthy"
    return once.get("service", start)

def pytest_sessionfinish(session):
    print(f"starts={len(starts)}")
'''

TESTS = '''
def test_one(service):
    assert service == "healthy"

def test_two(service):
    assert service == "healthy"
'''


def test_a_failed_start_fails_one_module_and_the_next_tries_again(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_a.py").write_text(TESTS)
    (tmp_path / "test_b.py").write_text(TESTS)
    (tmp_path / "test_c.py").write_text(TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "4 passed, 2 errors" in out.stdout, out.stdout + out.stderr
    assert "ERROR test_a.py::test_one" in out.stdout and "ERROR test_a.py::test_two" in out.stdout
    assert "starts=2" in out.stdout  # retried once by test_b, then kept for test_c
