"""What every scenario shares: profiles, the machine record, medians, child processes, CPU pinning,
servers started and awaited, and one result row format for the JSON and the markdown table."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import multiprocessing as mp
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
MLSERVER_BIN = ROOT / ".venv-mlserver" / "bin"


@dataclass(frozen=True)
class Profile:
    """Sizes per profile: ``quick`` for a look (under 15 min on 2 cores), ``full`` for the record."""

    name: str
    runs: int
    online_entities: int
    online_requests: int          # per run, per system, per entity count
    online_rate: float            # open-loop requests per second
    saturation_seconds: float     # per concurrency level
    saturation_levels: tuple[int, ...]
    mat_entities: int
    mat_features: int
    mat_feast_entities: int       # Feast's materialize is slow: it gets its own (smaller) slice, ratio by rows/s
    pit_feature_rows: int
    pit_entity_rows: int
    pit_file_store_rows: int      # the dask file store gets a slice too
    drift_reference: int
    drift_current: int
    drift_columns: int
    batch_rows: int               # batch scoring (the endpoint loop gets at most 2,000 of them)


PROFILES = {
    "quick": Profile("quick", runs=5, online_entities=10_000, online_requests=80, online_rate=40.0,
                     saturation_seconds=1.0, saturation_levels=(1, 4, 16), mat_entities=100_000, mat_features=50,
                     mat_feast_entities=5_000, pit_feature_rows=1_000_000, pit_entity_rows=100_000,
                     pit_file_store_rows=1_000_000, drift_reference=100_000, drift_current=50_000,
                     drift_columns=50, batch_rows=50_000),
    # full: the sizes for the batch jobs; serving at 400 requests per phase and 5 s per level keeps
    # the whole profile near an hour on 2 cores
    "full": Profile("full", runs=5, online_entities=100_000, online_requests=400, online_rate=40.0,
                    saturation_seconds=5.0, saturation_levels=(1, 2, 4, 8, 16, 32), mat_entities=1_000_000,
                    mat_features=50, mat_feast_entities=50_000, pit_feature_rows=10_000_000,
                    pit_entity_rows=1_000_000, pit_file_store_rows=10_000_000, drift_reference=1_000_000,
                    drift_current=100_000, drift_columns=50, batch_rows=500_000),
}


@dataclass
class Row:
    """One line of the table: a system's figure in a scenario, and its ratio to a named baseline."""

    scenario: str
    case: str
    system: str
    metric: str
    value: float
    unit: str
    runs: list[float] = field(default_factory=list)
    baseline: str | None = None   # the system this row's ratio is against
    ratio: float | None = None    # >1 means keel (or this row) is better by that factor
    goal: str | None = None
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def better_ratio(ours: float, theirs: float, lower_is_better: bool) -> float:
    if lower_is_better:
        return theirs / ours if ours else float("inf")
    return ours / theirs if theirs else float("inf")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for pkg in ("feast", "kserve", "ray", "xgboost", "redis", "duckdb", "evidently", "mlflow", "pandas", "pyarrow"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run([str(MLSERVER_BIN / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
        versions["mlserver"] = out
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
        versions["redis-server"] = out.split("v=")[1].split()[0]
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1), "os": platform.platform(),
            "python": platform.python_version(), "versions": versions}


# -- processes ----------------------------------------------------------------------------------

def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_self(cpus: list[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def server_cpus() -> list[int]:
    """Servers under test get the last core; Redis and load generators share the rest (2 cores: one each)."""
    c = cores()
    return c[-1:] if len(c) > 1 else c


def client_cpus() -> list[int]:
    c = cores()
    return c[:-1] if len(c) > 1 else c


def free_port() -> int:
    from tests.conftest import free_ports

    return free_ports(1)[0]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Wait for a health URL to answer 2xx; fail at once if the process died."""
    from keel.infra.probes import http_ok, wait_until

    alive = (lambda: proc.poll() is None) if proc is not None else None
    if not wait_until(lambda: http_ok(url), timeout, alive=alive):
        state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "not healthy"
        raise RuntimeError(f"server for {url} {state} (waited up to {timeout:.0f}s)")


@contextlib.contextmanager
def server(cmd: list[str], health: str, cpus: list[int] | None = None, env: dict[str, str] | None = None,
           log: Path | None = None, cwd: Path | None = None, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """A server process in its own process group, pinned, awaited on its health URL, and stopped."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    prefix = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    proc = subprocess.Popen(prefix + cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=cwd, start_new_session=True)
    try:
        wait_http(health, timeout, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


@contextlib.contextmanager
def redis_server(cpus: list[int] | None = None) -> Iterator[str]:
    """A throwaway Redis on loopback, no persistence; yields its connection string."""
    import redis

    port = free_port()
    prefix = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    proc = subprocess.Popen([*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ``ru_maxrss``: Linux carries it across fork+exec, so a spawned
    child would report at least its parent's size; VmHWM belongs to the address space exec created."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_main(fn: Callable[..., Any], args: tuple, q: mp.Queue, cpus: list[int] | None) -> None:
    pin_self(cpus)
    try:
        t0 = time.perf_counter()
        res = fn(*args)
        seconds = time.perf_counter() - t0
        q.put(("ok", res, seconds, peak_rss_mb()))
    except BaseException as exc:  # report, don't hang the parent
        import traceback

        q.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", 0.0, 0.0))


def in_child(fn: Callable[..., Any], *args: Any, cpus: list[int] | None = None,
             timeout: float = 3600) -> tuple[Any, float, float]:
    """Run ``fn(*args)`` in a fresh spawned process: (result, seconds, peak RSS in MB of that process).
    A fresh process per run is what makes peak-memory figures per system honest."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_child_main, args=(fn, args, q, cpus))
    p.start()
    try:
        status, res, seconds, rss = q.get(timeout=timeout)
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its child process: {res}")
    return res, seconds, rss


def _repeat_main(fn: Callable[..., tuple[float, Any]], args: tuple, runs: int) -> tuple[Any, list[float]]:
    first = fn(*args, True)[1]
    return first, [fn(*args, False)[0] for _ in range(runs)]


def runs_in_child(fn: Callable[..., tuple[float, Any]], *args: Any, runs: int, cpus: list[int] | None = None,
                  timeout: float = 3600) -> tuple[Any, list[float], float]:
    """A warm-up and ``runs`` timed runs of one system in one fresh process: (the warm-up's result, each
    timed run's seconds, the process's peak RSS in MB). ``fn(*args, keep)`` times its own work and returns
    ``(seconds, result)``; only the warm-up keeps its result (``keep=True``), which the scenario checks.
    One process per system rather than per run: importing Feast or Evidently costs seconds a time, the
    same for every system and not what is compared."""
    (first, seconds), _, peak = in_child(_repeat_main, fn, args, runs, cpus=cpus, timeout=timeout)
    return first, seconds, peak


_BEGAN = time.monotonic()


def say(*parts: Any) -> None:
    """Progress on stderr, stamped with minutes:seconds since the bench started (where the time goes)."""
    t = int(time.monotonic() - _BEGAN)
    print(f"[bench {t // 60:2d}:{t % 60:02d}]", *parts, file=sys.stderr, flush=True)
