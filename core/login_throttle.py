"""Failed logins per address, throttled in the manner of IRC's "fakelag".

An address may fail ``burst`` logins at once; after that, one more each ``1 / rate`` seconds.
A login from an address over its budget is not refused but held: it is tried once the
address has earned it. So one address can neither spray passwords quickly nor keep every
account blocked (with the spec's 3 attempts and 10 s blocks, one address keeps at most a
handful blocked at a time), while a class behind one NAT that mistypes a few passwords at
once notices nothing.

The bookkeeping is the generic cell rate algorithm: per address the time its debt is paid
off (``_paid``), each failure adding ``1 / rate`` seconds. Only addresses that failed in the
last few seconds are kept, so memory follows the failures of the last moments, not history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BURST = 5
DEFAULT_RATE = 1.0  # failures per second once the burst is spent


@dataclass(slots=True)
class LoginThrottle:
    burst: int = DEFAULT_BURST
    rate: float = DEFAULT_RATE  # 0: no throttle
    # address -> when its debt is paid off; least recently failed first
    _paid: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._paid)

    def wait_until(self, address: str, now: float) -> float | None:
        """When a login from ``address`` may be tried, if not now."""
        paid = self._paid.get(address)
        if paid is None:
            return None
        ready = paid - (self.burst - 1) / self.rate
        return ready if ready > now else None

    def failed(self, address: str, now: float) -> None:
        """A login from ``address`` failed on its password at ``now``."""
        if not self.rate:
            return
        self._forget_paid(now)
        paid = self._paid.pop(address, now)  # re-inserted last: the order stays least recent first
        self._paid[address] = max(paid, now) + 1 / self.rate

    def _forget_paid(self, now: float) -> None:
        # A login is tried only once its address is within the burst, so every debt is paid
        # off at most ``burst / rate`` seconds after its last failure: whatever is older has
        # reached the front and goes here. Stopping at the first unpaid one keeps this O(1)
        # amortised; a younger entry paid off sooner waits for those before it.
        paid = self._paid
        while paid:
            address = next(iter(paid))
            if paid[address] > now:
                return
            del paid[address]
