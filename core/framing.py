"""Length-prefixed framing for the TCP stream.

Every frame is a 4-byte unsigned big-endian length followed by that many payload bytes.
The decoder is incremental in the manner of wsproto's frame buffer: it parses what it can
and keeps the rest until more bytes arrive, so any split of the stream yields the same
frames. Like Twisted's ``Int32StringReceiver`` it rejects an over-long length as soon as the
header is complete, before a single byte of the body is buffered.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!I")
DEFAULT_MAX_FRAME = 64 * 1024


class FrameError(Exception):
    """The peer sent bytes that cannot be framed (a protocol error on the remote side).

    ``frames`` holds the whole frames that ``feed`` decoded before the bad header: they were
    sent before the stream broke, so they are the peer's to have handled.
    """

    def __init__(self, reason: str, frames: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.frames = frames or []


def encode(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream, fed in arbitrary pieces, into payloads."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0  # offset of unparsed bytes; compacting lazily keeps feed() linear

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame now complete.

        Raises FrameError once a header announces more than ``max_frame`` bytes, carrying the
        frames complete before it; the decoder is unusable afterwards, since the stream has
        lost its framing.
        """
        self.append(data)
        frames: list[bytes] = []
        try:
            while (payload := self.next_frame()) is not None:
                frames.append(payload)
        except FrameError as exc:
            raise FrameError(str(exc), frames) from None
        return frames

    def append(self, data: bytes) -> None:
        """Add ``data`` without parsing it: ``next_frame`` takes the frames out one by one."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive.

        Raises FrameError when the next header announces more than ``max_frame`` bytes, and
        only then: every frame before it has come out. Taken one at a time, frames may be
        judged by a ``max_frame`` that changes between them (a server allows bigger ones
        once a connection has logged in).
        """
        buffer = self._buffer
        start = self._start
        end = len(buffer)
        if end - start < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(buffer, start)
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        body_end = start + HEADER.size + length
        if body_end > end:
            return None
        payload = bytes(buffer[start + HEADER.size : body_end])
        if body_end == end:
            buffer.clear()
            body_end = 0
        elif body_end > 65536:  # compacting lazily keeps a run of small frames linear
            del buffer[:body_end]
            body_end = 0
        self._start = body_end
        return payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer) - self._start
