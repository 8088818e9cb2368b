"""The reference step: the unit in which the bench states the server's CPU per message.

Absolute rates differ several-fold between machines of the same kind, and between builds of
the same CPython on one machine (an optimised build with PGO and LTO against one without),
because the server is pure Python. Its CPU time per message scales with how fast the
interpreter executes the server's kind of work, so the bench times a fixed piece of that
work and states the server's CPU per message as a count of it: "25 steps per message"
travels between machines where "27 µs" does not.

The step (unchanged since the bench first printed it, so old and new counts compare): one
Python function call with three arguments that builds a small slots dataclass, reads and
updates a dict entry (a ``get`` and a store) and formats an f-string of two fields -- what
the relay does per message many times over (a decode makes a message object, the rules make
effects and a log line, the loop looks connections up and formats frames). It is timed in
CPU time of this process (``time.process_time``), like the server's figure (read from
/proc), so another process taking the CPU does not stretch it; it is the best of 5 runs of
100,000 steps, which also hides a moment of cache or frequency disturbance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache

RUNS = 5
STEPS = 100_000


@dataclass(slots=True)
class _Sample:
    key: str
    value: int


def _reference_step(table: dict[str, int], key: str, value: int) -> str:
    sample = _Sample(key, value)
    table[key] = table.get(key, 0) + sample.value
    return f"{sample.key}; {sample.value}"


def measure_ns() -> float:
    """CPU nanoseconds per reference step, best of RUNS runs."""
    best = math.inf
    for _ in range(RUNS):
        table: dict[str, int] = {}
        started = time.process_time()
        for i in range(STEPS):
            _reference_step(table, "abc" if i & 1 else "de", i)
        best = min(best, time.process_time() - started)
    return best / STEPS * 1e9


@cache
def step_ns() -> float:
    """The step of this run (measured once, at first use)."""
    return measure_ns()


def steps(cpu_seconds_per_message: float) -> float:
    """Server CPU per message as a number of reference steps."""
    return cpu_seconds_per_message * 1e9 / step_ns()
