"""Starts, checks and stops the local services, each in its own process group.

A pid file records pid, process group and the process's start time, so `down` never signals a process
that merely reused a pid, and kills the whole group (MLflow's workers, too) so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keel.config import Settings
from keel.errors import KeelError, NotFoundError
from keel.infra.probes import http_ok, port_in_use, redis_ok, wait_until
from keel.stack.services import Service, build_services, deployment_services, resolve_binary


@dataclass
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    running: bool
    healthy: bool

    @property
    def state(self) -> str:
        if self.healthy:
            return "healthy"
        return "unhealthy" if self.running else "stopped"


def private_home(home: Path) -> None:
    """KEEL_HOME holds the stack's databases, tokens, passwords and prediction logs: only its owner may
    enter it (0700), whatever the umask it was first made with."""
    home.mkdir(parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        home.chmod(0o700)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime), counted after the ')' that closes the command name
    return stat.rsplit(")", 1)[1].split()[19]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) the live members of a process group have used so far."""
    total = 0
    for pid in _group_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


# a start that is still using CPU when start_timeout passes is slow (a busy machine), not stuck: it gets
# up to this many times the timeout; one that has been idle for IDLE_S is given up on at the timeout
BUSY_FACTOR, IDLE_S, PROGRESS_EVERY_S = 3.0, 5.0, 15.0
RAY_STARTED = b"Ray runtime started."  # what `ray start` prints once its node has joined the cluster


class Stack:
    """The local stack for one Settings (one state directory, one set of ports).

    ``on_wait`` receives a line of progress every 15 s while a start is slow (the CLI prints it)."""

    def __init__(self, settings: Settings, on_wait: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_wait = on_wait
        self.base: dict[str, Service] = build_services(settings)
        from keel.stack.ray_cluster import ray_services

        # after the platform services: Ray's worker nodes (they join the head), then model deployments
        self.services: dict[str, Service] = {**self.base, **{w.name: w for w in ray_services(settings)[1]},
                                             **deployment_services(settings)}
        self.run_dir = settings.home / "run"
        self.log_dir = settings.home / "logs"

    # -- helpers ------------------------------------------------------------------------------
    def _select(self, names: list[str] | None) -> list[Service]:
        if not names:
            return list(self.services.values())
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise NotFoundError("service", unknown[0], self.services)
        return [self.services[n] for n in self.services if n in names]

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _record(self, name: str) -> dict | None:
        try:
            rec = json.loads(self._pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        if _proc_start_time(rec["pid"]) != rec.get("start_time"):
            return {**rec, "alive": False}
        return {**rec, "alive": True}

    def _healthy(self, svc: Service) -> bool:
        if svc.health == "redis":
            return redis_ok(self.settings.host, svc.port)
        if svc.health == "postgres":  # its socket there, and the server saying it accepts connections
            from keel.stack import postgres

            return postgres.healthy(self.settings) and self._logged_since_start(svc.name, postgres.READY)
        if svc.health == "ray":  # a Ray node: its gRPC port open, and `ray start` saying it joined
            return port_in_use(self.settings.host, svc.port) and self._logged_since_start(svc.name, RAY_STARTED)
        return http_ok(svc.url + svc.health.removeprefix("http:"))

    def _logged_since_start(self, name: str, text: bytes) -> bool:
        rec = self._record(name)
        if rec is None:
            return False
        try:
            with open(self.log_path(name), "rb") as log:
                log.seek(int(rec.get("log_offset", 0)))
                return text in log.read()
        except OSError:
            return False

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # -- verbs --------------------------------------------------------------------------------
    def up(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Start what is not running and wait until healthy: platform services first, then model
        deployments (which need MLflow and Redis to load)."""
        private_home(self.settings.home)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        chosen = self._select(names)
        first = ("postgres",)  # the database, up before what keeps its data there
        for phase in ([s for s in chosen if s.name in first],
                      [s for s in chosen if s.name in self.base and s.name not in first],
                      [s for s in chosen if s.name not in self.base]):
            self._up_phase(phase)
        return self.status(names)

    def _up_phase(self, services: list[Service]) -> None:
        started: list[tuple[Service, subprocess.Popen]] = []
        for svc in services:
            rec = self._record(svc.name)
            if rec and rec["alive"]:
                if wait_until(lambda s=svc: self._healthy(s), self.settings.start_timeout):
                    continue
                raise KeelError(f"{svc.name} (pid {rec['pid']}) is running but not healthy; "
                                f"see `keel logs {svc.name}`")
            if svc.own_port and port_in_use(self.settings.host, svc.port):
                var = f"KEEL_{svc.name.upper()}_PORT" if svc.name in self.base else "--port"
                raise KeelError(f"port {svc.port} for {svc.name} is already in use by another program; "
                                f"stop it or choose another port with {var}")
            started.append((svc, self._spawn(svc)))
        try:  # spawned together, awaited one by one: a phase costs its slowest start, not the sum
            for svc, proc in started:
                self._await_or_restart(svc, proc)
        except KeelError:
            for svc, _ in started:  # all or nothing for what this call started
                self._stop_one(svc.name)
            raise

    def _spawn(self, svc: Service) -> subprocess.Popen:
        if svc.prepare:
            try:
                svc.prepare()
            except OSError as exc:
                raise KeelError(f"{svc.name}: cannot write its files under {self.settings.home}: "
                                f"{exc.strerror or exc} ({exc.filename})") from None
        cmd = resolve_binary(svc.command)
        env = {**os.environ, **svc.env}
        fd = os.open(self.log_path(svc.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a log an earlier version wrote 0644
        offset = os.fstat(fd).st_size  # where this start's output begins (the log is appended to)
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(  # umask 077: what services write (databases, dumps, logs) is the user's only
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.settings.home, umask=0o077,
            )
        rec = {"pid": proc.pid, "pgid": proc.pid, "start_time": _proc_start_time(proc.pid), "cmd": cmd,
               "log_offset": offset}
        self._pidfile(svc.name).write_text(json.dumps(rec))
        return proc

    def _await_or_restart(self, svc: Service, proc: subprocess.Popen) -> None:
        """Wait for a fresh start; one that fails is stopped and started once more (a busy machine, a
        port or lock another process let go of a moment ago), and only a second failure is an error.
        The restart is noted in the service's own log, so the CLI's error stays one line."""
        why = self._await(svc, proc)
        if why is None:
            return
        self._stop_one(svc.name)
        with open(self.log_path(svc.name), "a") as log:
            log.write(f"[keel] {svc.name} {why}; starting it once more\n")
        again = self._await(svc, self._spawn(svc))
        if again is not None:
            tail = self.tail(svc.name, 5).strip().replace("\n", " | ")
            raise KeelError(f"{svc.name} failed to start, twice ({why}; then {again}); last log lines: {tail}")

    def _await(self, svc: Service, proc: subprocess.Popen) -> str | None:
        """None once healthy; otherwise why not. ``start_timeout`` bounds an idle start; a start still
        using CPU gets up to BUSY_FACTOR times that."""
        limit = self.settings.start_timeout
        start = last_busy = time.monotonic()
        cpu, note_at = _group_cpu_s(proc.pid), start + PROGRESS_EVERY_S
        while True:
            if self._healthy(svc):
                return None
            if proc.poll() is not None:
                return f"exited with code {proc.returncode}"
            now = time.monotonic()
            used = _group_cpu_s(proc.pid)
            if used > cpu + 0.05:
                cpu, last_busy = used, now
            if now - start >= limit and (now - last_busy >= IDLE_S or now - start >= BUSY_FACTOR * limit):
                return f"not healthy after {now - start:.0f}s"
            if self.on_wait is not None and now >= note_at:
                note_at += PROGRESS_EVERY_S
                self.on_wait(f"waiting for {svc.name}: {now - start:.0f}s so far "
                             f"({'still starting' if now - last_busy < IDLE_S else 'idle'}; "
                             f"start timeout {limit:.0f}s)")
            time.sleep(0.2)

    def _stop_one(self, name: str, timeout: float = 30.0) -> bool:
        """SIGTERM the leader and give it time to stop its own children (Ray drains replicas, uvicorn
        drains requests, logs flush); then sweep what is left of its process group, TERM then KILL."""
        rec = self._record(name)
        if rec is None:
            return False
        pid, pgid = rec["pid"], rec["pgid"]
        svc = self.services.get(name)
        if rec["alive"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, svc.stop_signal if svc is not None else signal.SIGTERM)
            wait_until(lambda: _proc_start_time(pid) in (None, "") or _is_zombie(pid), timeout, interval=0.1)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not _group_members(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            wait_until(lambda: not _group_members(pgid), wait, interval=0.1)
        with contextlib.suppress(ChildProcessError):  # reap if it is our child (tests)
            os.waitpid(pid, os.WNOHANG)
        self._pidfile(name).unlink(missing_ok=True)
        if svc is not None and svc.cleanup is not None:
            svc.cleanup()
        return True

    def down(self, names: list[str] | None = None) -> list[str]:
        stopped = []
        for svc in reversed(self._select(names)):
            if self._stop_one(svc.name):
                stopped.append(svc.name)
        return stopped

    def stop(self, name: str) -> bool:
        """Stop one service (a deployment being replaced or removed)."""
        return self._stop_one(name)

    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        out = []
        for svc in self._select(names):
            rec = self._record(svc.name)
            running = bool(rec and rec["alive"])
            out.append(ServiceStatus(svc.name, svc.url, rec["pid"] if running and rec else None,
                                     running, running and self._healthy(svc)))
        return out

    def pgids(self) -> list[int]:
        """Process groups of the services keel started (for tests that prove `down` left nothing)."""
        return [rec["pgid"] for n in self.services if (rec := self._record(n))]

    def tail(self, name: str, lines: int = 50) -> str:
        path = self.log_path(name)
        # a deployment that failed to start is no longer a service, but its log is what the user needs
        if name not in self.services and not path.exists():
            raise NotFoundError("service", name, self.services)
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
        return "\n".join(data.splitlines()[-lines:])

    def wait_healthy(self, name: str, timeout: float | None = None) -> bool:
        svc = self.services[name]
        return wait_until(lambda: self._healthy(svc), timeout or self.settings.start_timeout)


def follow(path: Path, poll: float = 0.5) -> None:  # pragma: no cover - interactive
    """`keel logs -f`: print new lines until interrupted."""
    with open(path, errors="replace") as fh:
        fh.seek(0, os.SEEK_END)
        while True:
            line = fh.readline()
            if line:
                print(line, end="")
            else:
                time.sleep(poll)
