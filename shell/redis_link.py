"""One connection to Redis as one more non-blocking socket in the server's selectors loop.

The link never waits: ``connect`` is started non-blocking and finished when the socket turns
writable; requests are pipelined into an output buffer written as the socket takes it; each
reply is handed to the callback its request was queued with, in order (Redis answers a
connection's requests in the order they came). A lost connection (closed, reset, a reply
overdue, Redis still loading its data set) is closed and retried with exponential backoff;
while it is down ``send`` refuses, so the caller can refuse its users' requests.
"""

from __future__ import annotations

import errno
import selectors
import socket
from collections import deque
from enum import Enum
from typing import Any, Callable

from .resp import Address, Arg, Parser, ReplyError, command

Callback = Callable[[Any], None]
MIN_BACKOFF = 0.05  # seconds before the first retry; doubled per failure
MAX_BACKOFF = 1.0  # a restarted Redis is found within a second
CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0  # a request unanswered this long means Redis is gone (or stopped)
READ_CHUNK = 256 * 1024


class State(Enum):
    DOWN = "down"  # no socket; retry at ``retry_at``
    CONNECTING = "connecting"  # non-blocking connect under way
    HANDSHAKE = "handshake"  # (AUTH,) SELECT and PING sent; ready when the PING is answered
    READY = "ready"


class RedisLink:
    def __init__(self, address: Address, selector: selectors.BaseSelector,
                 on_ready: Callable[[], None], on_down: Callable[[], None]) -> None:
        self.address = address
        self.selector = selector
        self._on_ready = on_ready
        self._on_down = on_down
        self.state = State.DOWN
        self.sock: socket.socket | None = None
        self.retry_at = 0.0  # connect at the first poll
        self._backoff = MIN_BACKOFF
        self._out = bytearray()
        self._callbacks: deque[Callback | None] = deque()
        self._parser = Parser()
        self._since = 0.0  # when the oldest unanswered request was sent, or the connect began
        self._events = 0

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def send(self, *args: Arg, callback: Callback | None = None) -> bool:
        """Queue one request; False (nothing queued) while the link is not ready."""
        if self.state is not State.READY:
            return False
        self._queue(args, callback)
        return True

    def _queue(self, args: tuple[Arg, ...], callback: Callback | None) -> None:
        if not self._callbacks:
            self._since = self._now
        self._out += command(*args)
        self._callbacks.append(callback)

    # --- driven by the loop --------------------------------------------------------------

    _now = 0.0

    def poll(self, now: float) -> None:
        """Timers: start a (re)connect when due; give up on a connect or reply overdue."""
        self._now = now
        if self.state is State.DOWN:
            if now >= self.retry_at:
                self._connect(now)
        elif self.state is State.CONNECTING:
            if now - self._since > CONNECT_TIMEOUT:
                self._fail(now)
        elif self._callbacks and now - self._since > REPLY_TIMEOUT:
            self._fail(now)

    def deadline(self) -> float | None:
        """When ``poll`` next has something to do."""
        if self.state is State.DOWN:
            return self.retry_at
        if self.state is State.CONNECTING:
            return self._since + CONNECT_TIMEOUT
        return self._since + REPLY_TIMEOUT if self._callbacks else None

    def handle_event(self, mask: int, now: float) -> None:
        """The selector reported the socket ready (its ``data`` is this link)."""
        self._now = now
        if self.state is State.CONNECTING:
            if mask & selectors.EVENT_WRITE:
                self._connected(now)
            return
        if mask & selectors.EVENT_READ:
            self._read(now)
        if mask & selectors.EVENT_WRITE and self.sock is not None:
            self.flush()

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it; watch for writability if not all."""
        if self.sock is None or self.state in (State.DOWN, State.CONNECTING):
            return
        if self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._fail(self._now)
                return
            del self._out[:sent]
        self._watch(selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0))

    def close(self) -> None:
        if self.sock is not None:
            if self._events:
                self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
        self._events = 0
        self.state = State.DOWN

    def reset(self) -> None:
        """Drop the connection and retry later, as if Redis had closed it."""
        if self.sock is not None:
            self._fail(self._now)

    # --- connection life -----------------------------------------------------------------

    def _connect(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._events = 0
        self._since = now
        code = sock.connect_ex((self.address.host, self.address.port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.state = State.CONNECTING  # so that _fail cleans up the same way
            self._fail(now)
            return
        self.state = State.CONNECTING
        self._watch(selectors.EVENT_WRITE)

    def _connected(self, now: float) -> None:
        assert self.sock is not None
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._fail(now)
            return
        self.state = State.HANDSHAKE
        self._parser = Parser()
        for opening in self.address.handshake():  # AUTH, SELECT
            self._queue(opening, self._check_handshake)
        self._queue(("PING",), self._handshake_done)
        self.flush()

    def _check_handshake(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self._fail(self._now)

    def _handshake_done(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):  # e.g. LOADING: a restarted Redis reads its AOF
            self._fail(self._now)
            return
        self.state = State.READY
        self._backoff = MIN_BACKOFF
        self._on_ready()

    def _read(self, now: float) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._fail(now)
            return
        try:
            replies = self._parser.feed(data)
        except Exception:  # hiredis.ProtocolError: not Redis on the other end
            self._fail(now)
            return
        self._since = now
        for reply in replies:
            if not self._callbacks:  # a reply nobody asked for: the stream is out of step
                self._fail(now)
                return
            callback = self._callbacks.popleft()
            if callback is not None:
                callback(reply)
            if self.sock is None:  # a callback failed the link
                return

    def _fail(self, now: float) -> None:
        was_up = self.state in (State.HANDSHAKE, State.READY)
        self.close()
        self._out.clear()
        self._callbacks.clear()
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        if was_up:
            self._on_down()

    def _watch(self, events: int) -> None:
        assert self.sock is not None
        if events == self._events:
            return
        if self._events:
            self.selector.modify(self.sock, events, self)
        else:
            self.selector.register(self.sock, events, self)
        self._events = events
