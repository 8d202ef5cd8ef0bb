"""A local multi-node Ray cluster: a head and N worker nodes, each its own ``ray start --block`` process
(its own raylet and object store, bounded CPUs and memory), on loopback — the topology KubeRay gives on
a cluster, so batch scoring fans out across real nodes on one machine. Ray schedules; keel only starts
and stops the nodes like any other local service.

Ports: the head's GCS on ``KEEL_RAY_PORT``; node managers on the next ports (head +1, worker i +1+i).
A node is healthy when that port is open and ``ray start`` has said "Ray runtime started." (it joined).
Ray keeps its sockets under a short directory in the system temp dir (a Unix socket path must stay
under ~100 bytes, too few for a deep KEEL_HOME).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.stack.services import Service

HEAD = "ray-head"
# `ray start` drains a node for 30 s on SIGTERM by default; a local node has nothing to hand over
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3", "RAY_USAGE_STATS_ENABLED": "0"}


def temp_dir(s: Settings) -> Path:
    return Path(tempfile.gettempdir()) / f"keel-ray-{hashlib.sha256(str(s.home).encode()).hexdigest()[:10]}"


def ray_services(s: Settings) -> tuple[list[Service], list[Service]]:
    """(the head, the workers): the head starts with the platform services, the workers after it is up."""
    from keel.stack.services import Service, _venv_bin

    if s.ray_workers <= 0:
        return [], []
    h, ray = s.host, _venv_bin("ray")
    tmp = str(temp_dir(s))
    common = ["--block", "--node-ip-address", h, "--temp-dir", tmp, "--disable-usage-stats",
              "--object-store-memory", str(s.ray_object_store_mb * 2**20)]

    def prepare() -> None:
        temp_dir(s).mkdir(mode=0o700, exist_ok=True)

    def cleanup() -> None:  # the head goes last: every node's session files with it
        shutil.rmtree(temp_dir(s), ignore_errors=True)

    head = [Service(HEAD, s.ray_port, f"ray://{h}:{s.ray_port}",
                        [ray, "start", "--head", "--port", str(s.ray_port), "--node-manager-port",
                         str(s.ray_port + 1), "--num-cpus", "0", "--include-dashboard", "false", *common],
                        "ray", env=dict(ENV), prepare=prepare, cleanup=cleanup)]
    workers = []
    for i in range(1, s.ray_workers + 1):
        port = s.ray_port + 1 + i
        workers.append(Service(f"ray-worker-{i}", port, f"ray://{h}:{port}",
                                [ray, "start", "--address", f"{h}:{s.ray_port}", "--node-manager-port", str(port),
                                 "--num-cpus", str(s.ray_worker_cpus), *common], "ray", env=dict(ENV)))
    return head, workers
