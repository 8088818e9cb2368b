"""When to try the server again after the connection is lost: exponential backoff.

Pure: the session asks for the next delay and adds it to the time it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_DELAY = 1.0  # seconds before the first attempt
MAX_DELAY = 30.0  # the delay doubles after each failed attempt, up to this


@dataclass
class Backoff:
    """1, 2, 4, 8, 16, 30, 30 ... seconds; ``reset`` after a success starts again at 1."""

    first: float = FIRST_DELAY
    cap: float = MAX_DELAY
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
