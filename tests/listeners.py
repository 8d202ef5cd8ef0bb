"""The TCP listeners of a set of process groups, read from /proc (no ss/lsof needed): what a stack exposes."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from keel.stack.supervisor import _group_members


def _sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket on the machine."""
    out: dict[str, tuple[str, int]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            host, port = f[1].split(":")
            raw = bytes.fromhex(host)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = str(ipaddress.IPv6Address(raw))
            else:
                addr = str(ipaddress.IPv4Address(raw[::-1]))
            out[f[9]] = (addr, int(port, 16))
    return out


def _descendants(roots: set[int]) -> set[int]:
    """roots and every process below them (Ray starts its raylet, GCS and workers in sessions of their own)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def listeners(pgids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, command, address, port) of each listening socket held by a process of these groups or below."""
    socks = _sockets()
    found = []
    for pid in sorted(_descendants({p for g in pgids for p in _group_members(g)})):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and (inode := target[8:-1]) in socks:
                found.append((pid, cmd, *socks[inode]))
    return found


def off_loopback(pgids: list[int]) -> list[tuple[int, str, str, int]]:
    return [x for x in listeners(pgids) if not ipaddress.ip_address(x[2]).is_loopback]
