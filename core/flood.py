"""Flood control: a token bucket, the rule behind IRC's "fakelag".

A connection may make ``burst`` requests at once and ``rate`` a second after that. Over its
budget it is not refused or dropped: the shell just stops reading it until it has earned its
next request, so a flooder slows itself down and the bytes it keeps sending wait in the
kernel. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` a second; a request takes one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and room for one token")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def wait(self, now: float) -> float:
        """0.0 when a token is there to take; else the seconds until there will be one."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        """Spend a token (``wait`` said there was one)."""
        self.tokens -= 1

    def full(self, now: float) -> bool:
        """True once the bucket would be back to its whole burst: its state then says nothing."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst
