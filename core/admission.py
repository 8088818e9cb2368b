"""Who may connect: per-address limits on connections, on connections not yet logged in, and
on new connections per minute.

One address is one user, a household, or a whole class behind one NAT; it must never be able
to fill the server for everyone else. ``Admission`` keeps the counts and decides; the shell
tells it when a connection arrives, logs in and goes. Time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .flood import TokenBucket

TOO_MANY = "Error. Too many connections from your address. Please try again later."
TOO_FAST = "Error. Too many new connections from your address. Please try again in a minute."


@dataclass(frozen=True)
class AddressLimits:
    """Per address; 0 means no limit."""

    connections: int = 256  # at once, logged in or not
    waiting: int = 128  # at once, not yet logged in
    per_minute: int = 256  # new connections, allowed as one burst, then refilled evenly


@dataclass(slots=True)
class _Address:
    connections: int = 0
    waiting: int = 0
    bucket: TokenBucket | None = None


@dataclass
class Admission:
    limits: AddressLimits
    _addresses: dict[str, _Address] = field(default_factory=dict)
    _sweep_at: int = 1024  # forget idle addresses when the table reaches this size

    def admit(self, ip: str, now: float) -> str | None:
        """Count a new connection from ``ip`` in and return None, or return why it is refused."""
        limits = self.limits
        address = self._addresses.get(ip)
        if address is None:
            if len(self._addresses) >= self._sweep_at:
                self._sweep(now)
            address = self._addresses[ip] = _Address()
        if limits.connections and address.connections >= limits.connections:
            return TOO_MANY
        if limits.waiting and address.waiting >= limits.waiting:
            return TOO_MANY
        if limits.per_minute:
            if address.bucket is None:
                address.bucket = TokenBucket(limits.per_minute / 60, limits.per_minute, now)
            if address.bucket.wait(now):
                return TOO_FAST
            address.bucket.take()
        address.connections += 1
        address.waiting += 1
        return None

    def logged_in(self, ip: str) -> None:
        self._addresses[ip].waiting -= 1

    def closed(self, ip: str, logged_in: bool) -> None:
        address = self._addresses[ip]
        address.connections -= 1
        if not logged_in:
            address.waiting -= 1

    def waiting(self, ip: str) -> int:
        address = self._addresses.get(ip)
        return address.waiting if address else 0

    def _sweep(self, now: float) -> None:
        """Forget addresses with no connection whose rate budget is whole again (amortised O(1):
        the table must double before the next sweep)."""
        self._addresses = {
            ip: a for ip, a in self._addresses.items()
            if a.connections or (a.bucket is not None and not a.bucket.full(now))
        }
        self._sweep_at = max(1024, 2 * len(self._addresses))
