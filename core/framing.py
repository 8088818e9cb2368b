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
    """The peer sent bytes that cannot be framed (a protocol error on the remote side)."""


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

        Raises FrameError once a header announces more than ``max_frame`` bytes; the
        decoder is unusable afterwards, since the stream has lost its framing.
        """
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = self._start
        end = len(buffer)
        while end - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self.max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
            body_end = start + HEADER.size + length
            if body_end > end:
                break
            frames.append(bytes(buffer[start + HEADER.size : body_end]))
            start = body_end
        if start == end:
            buffer.clear()
            start = 0
        elif start > 65536:
            del buffer[:start]
            start = 0
        self._start = start
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer) - self._start
