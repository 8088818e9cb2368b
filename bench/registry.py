"""The registry of benchmark rows: adding a row is one decorated function in one file.

    from bench.registry import Sizes, row, scenario

    @scenario("tls")
    def tls(sizes: Sizes, profile: Path | None) -> list[dict]:
        ...
        return [row("tls relay", rate, "msg/s", ">= 0.5 x plain relay", met, anchor=plain, ratio=...)]

A scenario gets the run's ``Sizes`` (``sizes.quick`` says whether this is the under-a-minute
``--quick`` run: pick tiny sizes then) and, when profiling, the path the server's profile
goes to. It returns one or more rows made by ``row``. ``python3 -m bench`` imports
``bench.scenarios`` (the built-in rows) and then every module of the
package ``bench.rows`` (one file per added row), so a new row needs no edit anywhere else;
``--only NAME`` selects it by its scenario name. Rows run in the order they were registered.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

Row = dict[str, Any]
Scenario = Callable[["Sizes", "Path | None"], list[Row]]


@dataclass(frozen=True)
class Sizes:
    """How big each built-in scenario's load is (``FULL`` for ``make bench``, ``QUICK`` for
    ``make bench QUICK=1``); rows of their own read ``quick``."""

    quick: bool = False
    relay_clients: int = 100
    relay_window: int = 64
    relay_procs: int = 2
    relay_warmup: float = 1.0
    relay_seconds: float = 5.0
    text: str = "The quick brown fox jumps over the lazy dog"  # 43 characters, a typical chat line
    latency_clients: int = 1000
    latency_rate: float = 5000.0
    latency_procs: int = 2
    latency_warmup: float = 1.0
    latency_seconds: float = 8.0
    sessions: int = 10_000
    sessions_procs: int = 4
    login_cycles: int = 1000
    login_procs: int = 2
    login_window: int = 500
    presence_small: int = 100  # users online beside the login+logout cycles...
    presence_large: int = 10_000  # ...and beside these; also the larger login burst (a tenth: the smaller)
    presence_cycles: int = 2000  # login+logout cycles timed
    group_members: int = 500
    group_window: int = 16  # group messages in flight (posted, not yet at the last member)
    group_procs: int = 2
    group_warmup: float = 1.0
    group_seconds: float = 4.0
    transfer_bytes: int = 100 * 1024 * 1024
    ceiling_bytes: int = 100 * 1024 * 1024


FULL = Sizes()
QUICK = Sizes(
    quick=True, relay_clients=20, relay_warmup=0.3, relay_seconds=1.0,
    latency_clients=100, latency_rate=500.0, latency_warmup=0.3, latency_seconds=1.0,
    sessions=200, sessions_procs=2, login_cycles=100, login_window=50,
    presence_small=10, presence_large=1000, presence_cycles=500,
    group_members=50, group_warmup=0.3, group_seconds=1.0,
    transfer_bytes=4 * 1024 * 1024, ceiling_bytes=4 * 1024 * 1024,
)

SCENARIOS: dict[str, Scenario] = {}
BUILT_IN = ("bench.scenarios",)


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register ``function`` as the scenario ``name`` (the name ``--only`` selects)."""

    def register(function: Scenario) -> Scenario:
        if name in SCENARIOS:
            raise ValueError(f"two benchmark scenarios are named {name!r}")
        SCENARIOS[name] = function
        return function

    return register


def load() -> dict[str, Scenario]:
    """Import the built-in scenarios and every module of ``bench.rows``; all of them, by name."""
    for module in BUILT_IN:
        importlib.import_module(module)
    from . import rows

    for info in sorted(pkgutil.iter_modules(rows.__path__), key=lambda m: m.name):
        importlib.import_module(f"{rows.__name__}.{info.name}")
    return SCENARIOS


def row(name: str, figure: float | None, unit: str, target: str, met: bool | None, *, anchor: float | None = None,
        ratio: float | None = None, steps: float | None = None, note: str = "", **details: Any) -> Row:
    """One line of the table: ``figure`` in ``unit`` beside ``anchor`` (the same quantity
    measured in the same run for what a user would pick instead, e.g. Redis), ``ratio`` =
    figure / anchor, ``steps`` = server CPU per message in reference steps (``bench.reference``).
    ``met`` is None where there is no target or it could not be judged. ``details`` go to the
    JSON; ``details["load_bound"]`` / ``details["anchor_load_bound"]`` (true when the load
    processes, not the server, limited a figure) make the table say so."""
    return {"name": name, "figure": figure, "unit": unit, "target": target, "met": met, "anchor": anchor,
            "ratio": ratio, "steps": steps, "note": note, "details": details}
