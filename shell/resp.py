"""RESP, the Redis wire protocol: request encoding, and ``hiredis.Reader`` for the replies.

Requests are arrays of bulk strings (the RESP spec's one form for commands). Replies are parsed
by ``hiredis.Reader``, a sans-I/O parser: bytes in, whole replies out. ``hiredis`` is the
cluster mode's optional extra, imported only when a node is started with ``--redis``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import urlsplit

import hiredis

Arg = Union[bytes, str, int]
ReplyError = hiredis.ReplyError
NOT_READY = False  # what hiredis.Reader.gets() returns while no whole reply is buffered


def command(*args: Arg) -> bytes:
    """One request: ``*N`` then each argument as a bulk string."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Parser:
    """Whole replies from a byte stream; an error reply comes back as a ``ReplyError`` value."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()

    def feed(self, data: bytes) -> list[Any]:
        """Raises ``hiredis.ProtocolError`` when the stream is not RESP."""
        self._reader.feed(data)
        replies = []
        while (reply := self._reader.gets()) is not NOT_READY:
            replies.append(reply)
        return replies


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    db: int
    password: str | None = None  # from redis://:PASSWORD@HOST:PORT/DB, for Redis's requirepass

    def __str__(self) -> str:  # never shows the password
        return f"redis://{self.host}:{self.port}/{self.db}"

    def handshake(self) -> list[tuple[Arg, ...]]:
        """What opens every connection: AUTH when there is a password, then SELECT."""
        return [*([("AUTH", self.password)] if self.password else []), ("SELECT", self.db)]


def parse_url(url: str) -> Address:
    """``redis://[:PASSWORD@]HOST[:PORT][/DB]``; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"{url!r} is not redis://HOST:PORT/DB")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"{url!r}: the database must be a number")
    return Address(parts.hostname, parts.port or 6379, int(db), parts.password)


def call_blocking(address: Address, commands: list[tuple[Arg, ...]], timeout: float) -> list[Any]:
    """Send ``commands`` over a fresh blocking connection and return their replies in order.

    Only for start-up and a clean stop, outside the event loop: the one place a node waits for
    Redis (each step bounded by ``timeout``). Raises OSError when Redis cannot be reached in
    time. The replies of the opening (AUTH, SELECT) come first.
    """
    with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
        opening = address.handshake()
        sock.sendall(b"".join(command(*c) for c in [*opening, *commands]))
        parser = Parser()
        replies: list[Any] = []
        while len(replies) < len(opening) + len(commands):
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            replies += parser.feed(data)
    return replies
