"""TESSENGER benchmark: ``python3 -m bench [--quick] [--only relay,login] [--profile DIR]``.

Starts the real server.py and its anchors (redis-server instances, a raw UDP blast) and
drives them from the same separate load processes; prints a table and writes the same as
JSON (bench/results.json). Server CPU is also stated in reference steps (``bench.reference``).
The rows come from ``bench.registry`` (built-in ones in ``bench.scenarios``, added ones in
``bench/rows/``). Performance targets are reported, never asserted: the exit status is
non-zero only when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import profiling, redis_anchor, reference, registry
from .common import ROOT
from .registry import FULL, QUICK, row

DEFAULT_JSON = ROOT / "bench" / "results.json"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "executable": sys.executable,
            "interpreter_ns": round(reference.step_ns()), "redis": redis_anchor.version(), "kernel": platform.release(),
            "memory_gib": round(memory, 1) if memory else None}


def busy_cpus(seconds: float = 0.5) -> float | None:
    """How many CPUs other processes kept busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("msg/s", "deliveries/s"):
        text = f"{value:,.0f}"
    elif unit == "MB/s":
        text = f"{value:,.0f}"
    elif unit in ("ms", "s"):
        text = f"{value:.2f}"
    elif unit == "KiB/session":
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _bounded(value: float | None, unit: str, load_bound: bool) -> str:
    """A figure, or what a load-bound one tells: only a lower bound of the server's rate."""
    return f">= {fmt(value, unit)} (load-bound)" if load_bound else fmt(value, unit)


def table(rows: list[dict[str, Any]]) -> str:
    header = ["benchmark", "figure", "target", "anchor (same run)", "ratio", "steps/msg", "met"]
    lines = []
    for r in rows:
        met = {True: "yes", False: "**NO**", None: "—"}[r["met"]]
        ours, theirs = r["details"].get("load_bound", False), r["details"].get("anchor_load_bound", False)
        bound = "" if ours == theirs else ("<= " if theirs else ">= ")
        ratio = "—" if r["ratio"] is None else f"{bound}{r['ratio']:.2f}"
        steps = "—" if r.get("steps") is None else f"{r['steps']:.1f}"
        lines.append([r["name"], _bounded(r["figure"], r["unit"], ours), r["target"],
                      _bounded(r.get("anchor"), r["unit"], theirs), ratio, steps, met])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in lines]
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(out + [""] + notes)


def main(argv: list[str]) -> int:
    BENCHMARKS = registry.load()
    parser = argparse.ArgumentParser(prog="python3 -m bench", description="TESSENGER benchmarks (SPEC §8).")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that everything runs, in seconds")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON.relative_to(ROOT)})")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="profile server.py; write DIR/NAME.prof (or .spy) and a summary DIR/NAME.txt per "
                             "benchmark (the figures of a profiled run are not the server's: use only the profile)")
    parser.add_argument("--profiler", choices=("cprofile", "py-spy"), default="cprofile",
                        help="cProfile inside the server (default) or py-spy attached from outside")
    parser.add_argument("--py-spy", default="py-spy", metavar="PATH", help="the py-spy executable")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    sizes = QUICK if args.quick else FULL
    profiling.SETTINGS.update(tool=args.profiler, py_spy=args.py_spy)
    suffix = ".prof" if args.profiler == "cprofile" else ".spy"
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["busy_cpus_before"] = busy = busy_cpus()
    print(f"TESSENGER bench{' (quick)' if args.quick else ''}: {info['nproc']} CPUs ({info['cpu']}), "
          f"Python {info['python']} ({info['executable']}: {info['interpreter_ns']} ns per reference step), "
          f"Redis {info['redis'] or '—'}{f'; server under {args.profiler}' if args.profile else ''}", flush=True)
    if redis_anchor.missing():
        print(redis_anchor.missing(), flush=True)
    if busy is not None and busy > 0.25:
        print(f"warning: other processes keep {busy:.1f} CPUs busy: the figures will be low and noisy", flush=True)
    rows: list[dict[str, Any]] = []
    failed = False
    began = time.monotonic()
    for name in names:
        t = time.monotonic()
        profile = args.profile / f"{name}{suffix}" if args.profile else None
        reference.sample()
        try:
            produced = BENCHMARKS[name](sizes, profile)
        except Exception as exc:
            failed = True
            traceback.print_exc()
            produced = [row(name, None, "", "", False, note=f"failed: {type(exc).__name__}: {exc}"[:400])]
        for r in produced:
            r["seconds"] = round(time.monotonic() - t, 2)
        rows += produced
        for r in produced:
            print(f"  {r['name']}: {fmt(r['figure'], r['unit'])}  ({time.monotonic() - t:.1f} s)", flush=True)
        if profile is not None and profile.exists():
            (args.profile / f"{name}.txt").write_text(profiling.summarize(profile))
    elapsed = time.monotonic() - began
    info["busy_cpus_after"] = busy_cpus()
    info["interpreter_ns"] = round(reference.step_ns())
    command = "python3 -m bench" + (" " + " ".join(argv) if argv else "")
    print()
    print(table(rows))
    print(f"\n{command}: {elapsed:.0f} s")
    result = {"command": command, "quick": args.quick, "profiled": bool(args.profile), "machine": info,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "elapsed_s": round(elapsed, 1), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
