"""Presence cost against the number of users online (issue 10, item 9; SPEC §8 "scale").

Two ratios, each of server CPU time measured in the same run, so they hold on any machine:
- a login+logout beside 10,000 online users against one beside 100 (target <= 1.5);
- 10,000 logins against 1,000 (target <= 11, i.e. close to linear).
Each login rewrote the whole of userlog.txt once (O(users) a login); the server now coalesces
the rewrites to a few a second, so a login costs the same however many are online.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any, Callable

from .common import ServerProcess, cleanup, cpu_seconds, make_data_dir, now
from .load import Workers, split

def cpu_time(pid: int) -> float:
    """The process's CPU seconds, to the nanosecond where the kernel tells it (schedstat), else to
    the clock tick: 1,000 logins take a few ticks only."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)


WINDOW = 200  # login+logout cycles at once
RUNS = 3  # each figure is the median of this many fresh servers: 1,000 logins take only
# ~0.1 s of server CPU, which one scheduling hiccup on a shared machine moves by 20 %


def _cycle_cpu(online: int, cycles: int) -> float:
    """Server CPU seconds per login+logout of one more user beside ``online`` idle users."""
    data_dir = make_data_dir(online + cycles)
    server = ServerProcess.tessenger(data_dir, extra=["--max-connections", str(online + 2 * WINDOW)])
    try:
        with Workers(server.port, split(list(range(online)), 2), timeout=300.0):  # logged in, idle
            with Workers(server.port, [list(range(online, online + cycles))], login=False) as churn:
                before = cpu_time(server.pid)
                results = churn.run("login_cycle", start=now(), window=WINDOW)
                spent = cpu_time(server.pid) - before
        if sum(r["cycles"] for r in results) != cycles:
            raise RuntimeError(f"only {sum(r['cycles'] for r in results)} of {cycles} cycles completed")
        return spent / cycles
    finally:
        server.stop()
        cleanup(data_dir)


def _login_cpu(users: int) -> float:
    """Server CPU seconds to log ``users`` in, WINDOW at a time."""
    data_dir = make_data_dir(users)
    server = ServerProcess.tessenger(data_dir)
    try:
        before = cpu_time(server.pid)
        with Workers(server.port, split(list(range(users)), 2), timeout=300.0, window=WINDOW // 2) as workers:
            spent = cpu_time(server.pid) - before
            if sum(r["logged_in"] for r in workers.run("idle", seconds=0.0)) != users:
                raise RuntimeError("not every user logged in")
        return spent
    finally:
        server.stop()
        cleanup(data_dir)


def _median_cpu(measure: Callable[[int], float], size: int) -> float:
    """``measure(size)`` on ``RUNS`` fresh servers, the middle figure."""
    return median(measure(size) for _ in range(RUNS))


def rows(sizes: Any, profile: Path | None = None) -> list[dict[str, Any]]:
    from .registry import row

    many, few, cycles = sizes.presence_large, sizes.presence_small, sizes.presence_cycles
    beside_few, beside_many = _cycle_cpu(few, cycles), _cycle_cpu(many, cycles)  # 2,000 cycles: steady already
    cycle_ratio = beside_many / beside_few
    logins_few, logins_many = _median_cpu(_login_cpu, many // 10), _median_cpu(_login_cpu, many)
    login_ratio = logins_many / logins_few
    return [
        row(f"login+logout beside {many:,} online", cycle_ratio, "x", f"<= 1.5 x beside {few}", cycle_ratio <= 1.5,
            note=f"server CPU per cycle: {beside_many * 1e6:.0f} us beside {many:,}, "
                                           f"{beside_few * 1e6:.0f} us beside {few} ({cycles} cycles, {WINDOW} at once)",
            beside_many_us=beside_many * 1e6, beside_few_us=beside_few * 1e6),
        row(f"{many:,} logins", login_ratio, "x", f"<= 11 x {many // 10:,} logins", login_ratio <= 11,
            note=f"server CPU: {logins_many:.2f} s for {many:,}, {logins_few:.3f} s for {many // 10:,} "
                 f"(each the median of {RUNS} servers)",
            many_s=logins_many, few_s=logins_few),
    ]
