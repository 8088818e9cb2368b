"""Profiling the server under a benchmark's load: cProfile (built in) or py-spy (sampling).

``python3 -m bench --only relay --profile DIR`` runs server.py under ``cProfile``; adding
``--profiler py-spy`` instead attaches ``py-spy record --pid`` to the running server (install
py-spy in a scratch virtual environment outside the repository and pass ``--py-spy PATH``).
cProfile's per-call overhead inflates small functions and slows the server down; py-spy
samples from outside and distorts less, but it takes CPU from a machine with few cores, so
latency figures of a profiled run mean nothing. Either way DIR/NAME.txt gets a summary.
"""

from __future__ import annotations

import collections
import io
import pstats
import re
import subprocess
from pathlib import Path

SETTINGS = {"tool": "cprofile", "py_spy": "py-spy", "rate": 250}


def server_prefix(path: Path) -> list[str]:
    """Arguments placed between the interpreter and server.py (cProfile only)."""
    return ["-m", "cProfile", "-o", str(path)] if SETTINGS["tool"] == "cprofile" else []


def attach(pid: int, path: Path) -> subprocess.Popen | None:
    """Start py-spy on ``pid`` (it stops when the server exits)."""
    if SETTINGS["tool"] != "py-spy":
        return None
    return subprocess.Popen(
        [SETTINGS["py_spy"], "record", "--pid", str(pid), "--rate", str(SETTINGS["rate"]), "--format", "raw",
         "--nonblocking", "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summarize(path: Path, limit: int = 25) -> str:
    if path.suffix == ".prof":
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
        return out.getvalue()
    return summarize_collapsed(path.read_text(), limit)


def summarize_collapsed(text: str, limit: int = 25) -> str:
    """Self and inclusive share per function from py-spy's raw (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(limit)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(limit)]
    return "\n".join(lines) + "\n"
