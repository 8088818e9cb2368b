"""What the load processes say to each server: TESSENGER's frames, or Redis's RESP.

The same load processes drive TESSENGER and the Redis anchors, with the same payloads; only
the bytes on the wire differ, and they are all here:

- ``Tessenger``: 4-byte length + JSON (PROTOCOL.md), written directly rather than through
  ``core`` so that what is measured is the server, not a second copy of its codec.
- ``Redis``: RESP3 (``HELLO 3``, so one connection can both SUBSCRIBE to its own channel
  and PUBLISH, as one TESSENGER connection both receives and sends). A client "logs in" by
  subscribing to the channel named after it; a private message is ``PUBLISH userN TEXT``,
  or with ``logged`` ``RPUSH messagelog LINE`` + ``PUBLISH userN TEXT`` (the list and the
  AOF are the log: PUBLISH alone never reaches the AOF); a group is a channel
  ``group:NAME`` its members subscribe to.

The hot loops do not parse what they count: ``Counter`` counts a marker that occurs once
per delivery (or acknowledgement) with ``bytes.count``, keeping the marker's length - 1
bytes across reads so a marker split between two reads is still counted once. Parsing
(``parse``) is for set-up and for the latency and group loops, which read the text.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .common import frame, login_frame, user

HEADER = struct.Struct("!I")
Message = dict[str, Any]


class Counter:
    """Occurrences of ``marker`` in a stream fed in arbitrary pieces."""

    __slots__ = ("marker", "tail", "total")

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.tail = b""
        self.total = 0

    def feed(self, data: bytes) -> int:
        """Count the markers ``data`` completes; returns how many."""
        if self.tail:
            data = self.tail + data
        n = data.count(self.marker)
        self.tail = data[1 - len(self.marker):] if len(self.marker) > 1 else b""
        self.total += n
        return n


# --- TESSENGER ---------------------------------------------------------------------------

class Tessenger:
    name = "TESSENGER"
    DELIVERY = b'"type":"message"'  # once per private message a receiver gets
    ACK = b'"type":"msg_sent"'  # once per acknowledgement a sender gets
    GROUP_DELIVERY = b'"type":"group_message"'
    acks_per_message = 1

    def hello(self, index: int) -> bytes:
        return login_frame(index)

    def msgto(self, sender: int, receiver: int, text: str) -> bytes:
        return frame({"type": "msgto", "receivers": [user(receiver)], "text": text})

    def msgto_prefix(self, sender: int, receiver: int) -> tuple[bytes, bytes]:
        """A message to ``receiver`` is ``prefix + TEXT + suffix``, framed (the latency loop
        puts a fresh time stamp in every text)."""
        return f'{{"type":"msgto","receivers":["{user(receiver)}"],"text":"'.encode(), b'"}'

    def framed(self, prefix: bytes, text: bytes, suffix: bytes) -> bytes:
        payload = prefix + text + suffix
        return HEADER.pack(len(payload)) + payload

    def groupmsg(self, group: str, text: str) -> bytes:
        return frame({"type": "groupmsg", "group": group, "text": text})

    def create_group(self, group: str, members: list[int]) -> bytes:
        return frame({"type": "creategroup", "group": group, "members": [user(m) for m in members]})

    def join_group(self, group: str) -> bytes:
        return frame({"type": "joingroup", "group": group})

    def parse(self, client: Any, buffer: bytearray) -> list[Message]:
        """Remove and return every whole message at the front of ``buffer``."""
        messages = []
        pos = 0
        end = len(buffer)
        while end - pos >= 4:
            (length,) = HEADER.unpack_from(buffer, pos)
            if pos + 4 + length > end:
                break
            messages.append(json.loads(bytes(buffer[pos + 4 : pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buffer[:pos]
        return messages


# --- Redis -------------------------------------------------------------------------------

def command(*args: str | bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Incomplete(Exception):
    """The buffer ends inside a value."""


def read_value(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """The RESP2/RESP3 value at ``pos`` and the position after it (``Incomplete`` if cut).

    Aggregates come back as ``(kind, items)``: kind ``*`` array, ``>`` push, ``%`` map
    (items flattened), ``~`` set; errors as ``("-", text)``; other scalars as bytes/int.
    """
    line_end = buffer.find(b"\r\n", pos)
    if line_end < 0:
        raise Incomplete
    kind = buffer[pos:pos + 1]
    body = bytes(buffer[pos + 1:line_end])
    after = line_end + 2
    if kind in (b"$", b"="):  # bulk string, verbatim string
        length = int(body)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise Incomplete
        return bytes(buffer[after:after + length]), after + length + 2
    if kind in (b"*", b">", b"%", b"~", b"|"):
        count = int(body) * (2 if kind in (b"%", b"|") else 1)
        items = []
        for _ in range(max(count, 0)):
            item, after = read_value(buffer, after)
            items.append(item)
        if kind == b"|":  # attributes precede the value they describe
            return read_value(buffer, after)
        return (kind.decode(), items), after
    if kind in (b":", b"("):
        return int(body), after
    if kind == b"-" or kind == b"!":
        return ("-", body.decode(errors="replace")), after
    if kind == b"_":
        return None, after
    return body, after  # + simple string, , double, # boolean


class Redis:
    name = "Redis"
    DELIVERY = b"$7\r\nmessage\r\n"  # once per pushed message, private or group
    GROUP_DELIVERY = DELIVERY
    ACK = b"\r\n"  # a sender gets only integer replies: one line each
    LOG = "messagelog"

    def __init__(self, logged: bool) -> None:
        self.logged = logged
        self.acks_per_message = 2 if logged else 1  # RPUSH's reply, then PUBLISH's

    def hello(self, index: int) -> bytes:
        return command("HELLO", "3") + command("SUBSCRIBE", user(index))

    def _publish(self, channel: str, sender: str, text: bytes) -> bytes:
        published = command("PUBLISH", channel, text)
        if not self.logged:
            return published
        return command("RPUSH", self.LOG, f"{sender} {channel} ".encode() + text) + published

    def msgto(self, sender: int, receiver: int, text: str) -> bytes:
        return self._publish(user(receiver), user(sender), text.encode())

    def msgto_prefix(self, sender: int, receiver: int) -> tuple[bytes, bytes]:
        return user(sender).encode(), user(receiver).encode()

    def framed(self, prefix: bytes, text: bytes, suffix: bytes) -> bytes:
        return self._publish(suffix.decode(), prefix.decode(), text)

    def groupmsg(self, group: str, text: str) -> bytes:
        return self._publish(f"group:{group}", "sender", text.encode())

    def create_group(self, group: str, members: list[int]) -> bytes:
        return b""  # a channel needs no creating

    def join_group(self, group: str) -> bytes:
        return command("SUBSCRIBE", f"group:{group}")

    def parse(self, client: Any, buffer: bytearray) -> list[Message]:
        """Whole replies and pushes at the front of ``buffer``, named as TESSENGER names
        their counterparts: ``welcome`` (subscribed to one's own channel), ``group_joined``,
        ``message`` / ``group_message`` (with ``text``), ``msg_sent`` (the last reply of a
        message's commands), ``error``; anything else is ``hello``."""
        messages = []
        pos = 0
        while pos < len(buffer):
            try:
                value, pos_after = read_value(buffer, pos)
            except Incomplete:
                break
            pos = pos_after
            messages.append(self._name(client, value))
        if pos:
            del buffer[:pos]
        return [m for m in messages if m is not None]

    def _name(self, client: Any, value: Any) -> Message | None:
        if isinstance(value, int):
            client.replies += 1
            return {"type": "msg_sent"} if client.replies % self.acks_per_message == 0 else None
        if isinstance(value, tuple) and value[0] == "-":
            return {"type": "error", "text": value[1]}
        if isinstance(value, tuple) and value[0] == ">" and len(value[1]) == 3:
            kind, channel, data = value[1]
            group = channel.startswith(b"group:")
            if kind == b"subscribe":
                return {"type": "group_joined" if group else "welcome"}
            if kind == b"message":
                return {"type": "group_message" if group else "message", "text": data.decode()}
        return {"type": "hello"}


WIRES = {"tessenger": Tessenger(), "redis": Redis(logged=False), "redis-aof": Redis(logged=True)}
