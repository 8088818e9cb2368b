"""Connections of the server and when it reads them: its limits, the per-connection state,
timers, and the one mechanism that stops reading a connection and starts again.

A connection is read only while nothing holds it back. What holds it back: a time before which
it must not be read (``pause_until``: flood control's fakelag, and any other caller that needs
"do not read this connection until T"), or a count of holds released explicitly (a login waiting
for ``userlog.txt``; each full receiver the connection sent to). A connection not read is not
watched for input either, so what its peer keeps sending waits in the kernel.
"""

from __future__ import annotations

import heapq
import selectors
import socket
from dataclasses import dataclass, field
from typing import Callable

from core.admission import AddressLimits
from core.flood import TokenBucket
from core.framing import DEFAULT_MAX_FRAME, FrameDecoder
from core.messages import Code, Error
from core.rules import Close, Effect, Send
from shell.tls import TLSTransport

LOGIN_FRAME = 4096  # frames before login are small: a username and a password
LOGIN_OUTPUT = 4096  # unsent bytes before login: a few replies; more and it does not read them

Batch = tuple["Connection | None", list[Effect]]  # the effects of one request, and whose it was
Action = Callable[["Connection", float], list[Effect]]


@dataclass
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME
    login_frame: int = LOGIN_FRAME
    login_timeout: float = 60.0
    max_output: int = 1024 * 1024
    max_connections: int = 10_000
    stall_timeout: float = 30.0
    frame_timeout: float = 60.0
    flood_rate: float = 10.0  # requests per second; 0: no flood control
    flood_burst: float = 20.0
    login_output: int = LOGIN_OUTPUT
    max_waiting: int = 2048  # connections not yet logged in, from all addresses
    addresses: AddressLimits = field(default_factory=AddressLimits)


@dataclass(eq=False)
class Connection:
    sock: "socket.socket | TLSTransport"
    conn_id: int
    ip: str
    decoder: FrameDecoder
    bucket: TokenBucket | None  # its request budget, None without flood control
    progress: float  # when its output last moved (or went over the limit)
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once ``out`` is written; read no more
    logged_in: bool = False
    events: int = selectors.EVENT_READ  # what the selector watches for; 0: not registered
    resume_at: float = 0.0  # fakelag: not read before this time
    holds: int = 0  # other reasons not to read it: a login being recorded, each full receiver it waits on
    waiters: dict["Connection", None] | None = None  # senders held until this one drains
    over: bool = False  # its output is over the limit: watched for a stall
    partial_since: float | None = None  # since when its decoder holds an incomplete frame
    partial_timer: bool = False  # a check of that is due
    handshaking: bool = False  # TLS: the handshake runs before anything is read

class ReadControl:
    """The part of the server that decides when each connection is read (a base class: the
    server's loop, in server.py, does the reading)."""

    selector: selectors.BaseSelector
    connections: dict[int, Connection]
    limits: Limits
    _backlog: dict[Connection, None]
    _pressed: list[tuple[Connection, Connection]]
    _drop: Callable[[Connection, float], list[Effect]]

    def __init__(self) -> None:
        self.timers: list[tuple[float, int, int, Action]] = []
        self._timer_seq = 0

    # --- timers --------------------------------------------------------------------------

    def _at(self, when: float, conn: Connection, action: Callable[[Connection, float], list[Effect]]) -> None:
        """Call ``action(conn, now)`` at ``when``, if the connection is still there."""
        self._timer_seq += 1
        heapq.heappush(self.timers, (when, self._timer_seq, conn.conn_id, action))

    def _run_timers(self, now: float, batches: list[Batch]) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, conn_id, action = heapq.heappop(timers)
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closing:
                batches.append((conn, action(conn, now)))

    # --- reading or not ------------------------------------------------------------------

    def pause_until(self, conn: Connection, when: float) -> None:
        """Do not read ``conn`` before ``when`` (its requests already read wait as well)."""
        if when > conn.resume_at:
            if not conn.resume_at:
                self._at(when, conn, self._resume)
            conn.resume_at = when
            self._stop_reading(conn)

    def _resume(self, conn: Connection, now: float) -> list[Effect]:
        """Its time is up: read it again (``_at`` calls this at ``resume_at``, or earlier when
        ``pause_until`` moved it later)."""
        if conn.resume_at > now:
            self._at(conn.resume_at, conn, self._resume)
            return []
        conn.resume_at = 0.0
        self._read_again(conn)
        return []

    def _readable(self, conn: Connection) -> bool:
        return not (conn.closing or conn.holds or conn.resume_at)

    def _stop_reading(self, conn: Connection) -> None:
        self._backlog.pop(conn, None)
        self._watch(conn)

    def _release(self, conn: Connection) -> None:
        """One reason to hold ``conn`` is gone."""
        conn.holds -= 1
        self._read_again(conn)

    def _read_again(self, conn: Connection) -> None:
        if self._readable(conn) and conn.conn_id in self.connections:
            self._backlog[conn] = None  # its decoder may hold whole frames: handle them first
            self._watch(conn)

    def _watch(self, conn: Connection) -> None:
        """Tell the selector what to wait for: input while it is read, output while some is pending."""
        events = (selectors.EVENT_READ if self._readable(conn) else 0) | (selectors.EVENT_WRITE if conn.out else 0)
        if events == conn.events:
            return
        if not events:
            self.selector.unregister(conn.sock)  # epoll cannot watch for nothing
        elif not conn.events:
            self.selector.register(conn.sock, events, conn)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events

    def _handshake(self, conn: Connection, now: float) -> list[Effect]:
        """One step of a TLS handshake, on readiness; a failed one costs only its connection."""
        try:
            events = conn.sock.handshake() or selectors.EVENT_READ
        except OSError:  # a plain client (it was told), a stray peer, a broken handshake
            return self._drop(conn, now)
        conn.handshaking = conn.sock.handshaking
        if events != conn.events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events
        return []

    # --- full receivers ------------------------------------------------------------------

    def _hold_senders(self) -> None:
        """A receiver still holding more than --max-output once written to: those who sent to it
        this turn are not read until it has taken some. The senders are slowed, never the
        receiver dropped for it (only a receiver that takes nothing for --stall-timeout is)."""
        max_output = self.limits.max_output
        for sender, receiver in self._pressed:
            if len(receiver.out) <= max_output or receiver.conn_id not in self.connections:
                continue
            if receiver.waiters is None:
                receiver.waiters = {}
            if sender not in receiver.waiters and sender.conn_id in self.connections:
                receiver.waiters[sender] = None
                sender.holds += 1
                self._stop_reading(sender)
        self._pressed.clear()

    def _release_waiters(self, conn: Connection) -> None:
        waiters, conn.waiters = conn.waiters or {}, None
        for sender in waiters:
            self._release(sender)

    # --- half frames ---------------------------------------------------------------------

    def _watch_partial_frame(self, conn: Connection, now: float, completed: bool) -> None:
        """A frame begun must be finished within --frame-timeout: a half frame is not kept forever.
        ``completed``: a frame was completed since the last look, so any part held now is newer."""
        if not conn.decoder.buffered:
            conn.partial_since = None
        elif conn.partial_since is None or completed:
            conn.partial_since = now
            if not conn.partial_timer:  # one timer a connection, however often its frames split
                conn.partial_timer = True
                self._at(now + self.limits.frame_timeout, conn, self._check_partial_frame)

    def _check_partial_frame(self, conn: Connection, now: float) -> list[Effect]:
        conn.partial_timer = False
        since = conn.partial_since
        if since is None:
            return []
        if not self._readable(conn) or conn in self._backlog:  # not its fault: the server is not reading it
            conn.partial_since = now
        elif since + self.limits.frame_timeout <= now:
            return self._reject(conn, "Error. A request was not completed in time.")
        conn.partial_timer = True
        self._at(conn.partial_since + self.limits.frame_timeout, conn, self._check_partial_frame)
        return []

    def _reject(self, conn: Connection, text: str) -> list[Effect]:
        return [Send((conn.conn_id,), Error(Code.PROTOCOL, text)), Close(conn.conn_id)]
