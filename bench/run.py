"""`make bench`: every scenario against the peers' own software, in one run on this machine.

    .venv/bin/python -m bench.run [--profile quick|full] [--only online,saturation,materialize,pit,drift]
                                  [--runs N]

Writes ``bench/results/<date>-<profile>[-<scenarios>].json`` (every run's figure, the machine, the
versions) and the same table as markdown next to it, and prints the table. A scenario whose systems
disagree on results fails the run before any speed is reported for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import PROFILES, Row, machine, say  # noqa: E402

SCENARIOS = ("online", "saturation", "rayfloor", "hang", "redis_down", "overload", "coldstart", "oversize", "batch",
             "cache", "materialize", "pit", "pit_ray", "rediscluster", "drift")


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def markdown(rows: list[Row], info: dict) -> str:
    out = [f"# keel benchmarks — {info['when']} ({info['profile']} profile)", "",
           f"Machine: {info['machine']['cores']} cores, {info['machine']['cpu']}, {info['machine']['memory_gib']} GiB, "
           f"Python {info['machine']['python']}.", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in info["machine"]["versions"].items()), "",
           f"Each figure is the median of {info['runs']} runs after a warm-up. Ratio: how many times better the row is "
           "than its baseline (>1 is better).", ""]
    for f in info.get("failed", []):
        out.append(f"**FAILED** {f}")
    scenario = None
    for r in rows:
        if r.scenario != scenario:
            scenario = r.scenario
            out += ["", f"## {scenario}", "", "| case | system | figure | ratio | goal | note |",
                    "|---|---|---|---|---|---|"]
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x vs {r.baseline}"
        goal = "" if r.goal is None else f"{r.goal}: **{'met' if r.met else 'missed'}**"
        out.append(f"| {r.case} | {r.system} | {r.metric} {_fmt(r.value)} {r.unit} | {ratio} | {goal} | {r.note} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default: the profile's, >= 5)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SCENARIOS]
    if bad:
        print(f"bench: unknown scenario '{bad[0]}'; expected some of: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    profile = PROFILES[args.profile]
    if args.runs:
        profile = dataclasses.replace(profile, runs=args.runs)
    began = time.monotonic()
    info = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "profile": profile.name, "runs": profile.runs,
            "sizes": dataclasses.asdict(profile), "machine": machine()}
    rows: list[Row] = []
    failed: list[str] = []
    t = Path(tempfile.mkdtemp(prefix="keel-bench-"))

    def scenario(name: str, fn: Any) -> None:
        """A scenario that fails (results disagree, a server dies) is reported and fails the run, but
        the others still run and are written."""
        try:
            rows.extend(fn())
        except Exception as exc:
            say(f"{name} FAILED: {type(exc).__name__}: {exc}")
            failed.append(f"{name}: {type(exc).__name__}: {exc}")

    if {"online", "saturation", "rayfloor"} & set(only):
        from bench import online, rayfloor

        def serving() -> list[Row]:
            with online.world(profile, t / "online") as w:
                rows, bad = online.serving(profile, w, {"online", "saturation"} & set(only))
                if "rayfloor" in only:
                    rows += rayfloor.run(profile, w)
            failed.extend(bad)
            return rows

        scenario("online/saturation", serving)
    if {"hang", "redis_down", "overload", "coldstart", "oversize", "batch", "cache"} & set(only):
        from bench import cache, faults, online, oversize, pressure, scale

        def faulty() -> list[Row]:  # one world (stack, repo, model) for all of them
            with online.world(profile, t / "faults") as w:
                return ((faults.run(profile, w) if "hang" in only else [])
                        + (pressure.redis_down(profile, w) if "redis_down" in only else [])
                        + (pressure.overload(profile, w) if "overload" in only else [])
                        + (pressure.coldstart(profile, w) if "coldstart" in only else [])
                        + (oversize.run(profile, w) if "oversize" in only else [])
                        + (scale.batch_rows(profile, w) if "batch" in only else [])
                        + (cache.run(profile, w) if "cache" in only else []))

        scenario("faults/pressure/batch/cache", faulty)
    if "materialize" in only:
        from bench import materialize

        scenario("materialize", lambda: materialize.run(profile, t / "materialize"))
    if "pit" in only:
        from bench import pit

        scenario("pit", lambda: pit.run(profile, t / "pit"))
    if "pit_ray" in only:
        from bench import scale

        scenario("pit_ray", lambda: scale.pit_ray_rows(profile, t / "pit_ray"))
    if "rediscluster" in only:
        from bench import scale

        scenario("rediscluster", lambda: scale.rediscluster_rows(profile, t / "rediscluster"))
    if "drift" in only:
        from bench import drift

        scenario("drift", lambda: drift.run(profile, t / "drift"))
    if failed:
        say(f"servers' logs and data are kept in {t}")
        info["failed"] = failed
    else:
        shutil.rmtree(t, ignore_errors=True)
    info["seconds"] = round(time.monotonic() - began, 1)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{profile.name}"
    if set(SCENARIOS) - set(only):  # a subset does not overwrite the day's whole record
        stem += "-" + "+".join(s for s in SCENARIOS if s in only)
    (out / f"{stem}.json").write_text(json.dumps({**info, "rows": [r.as_dict() for r in rows]}, indent=1) + "\n")
    md = markdown(rows, info)
    (out / f"{stem}.md").write_text(md)
    print(md)
    say(f"wrote bench/results/{stem}.json and .md in {info['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
