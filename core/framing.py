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
_HEAD = HEADER.size
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
        frames = self.take(len(self._buffer))  # more than there can be
        if self.ready:  # take stopped before a header announcing too much: the error
            try:
                self.take(1)
            except FrameError as exc:
                raise FrameError(str(exc), frames) from None
        return frames

    def append(self, data: bytes) -> None:
        """Add ``data`` without parsing it: ``take`` takes the frames out."""
        self._buffer += data

    def take(self, limit: int) -> list[bytes]:
        """Up to ``limit`` complete frames, in order; fewer when the bytes run out.

        A header announcing more than ``max_frame`` bytes stops the batch before it, and
        raises FrameError when it comes first: every frame before it has come out. So frames
        may be judged by a ``max_frame`` that changes between calls (a server allows bigger
        ones once a connection has logged in): a frame is judged by the limit of the call
        that reaches it.
        """
        buffer = self._buffer
        start = self._start
        end = len(buffer)
        max_frame = self.max_frame
        unpack = HEADER.unpack_from
        frames: list[bytes] = []
        while end - start >= _HEAD and len(frames) < limit:
            (length,) = unpack(buffer, start)
            if length > max_frame:
                if frames:
                    break
                raise FrameError(f"frame of {length} bytes exceeds the limit of {max_frame}")
            body_end = start + _HEAD + length
            if body_end > end:
                break
            frames.append(bytes(buffer[start + _HEAD : body_end]))
            start = body_end
        if start == end:
            buffer.clear()
            start = 0
        elif start > 65536:  # compacting lazily keeps a run of small frames linear
            del buffer[:start]
            start = 0
        self._start = start
        return frames

    def unread(self, frames: list[bytes]) -> None:
        """Put back ``frames``, the last ones ``take`` returned, to be taken again first
        (a server that stops handling a connection midway through a batch)."""
        if frames:
            self._buffer[self._start:self._start] = b"".join([encode(frame) for frame in frames])

    @property
    def ready(self) -> bool:
        """Whether ``take`` would now return a frame or raise."""
        start = self._start
        end = len(self._buffer)
        if end - start < _HEAD:
            return False
        (length,) = HEADER.unpack_from(self._buffer, start)
        return length > self.max_frame or start + _HEAD + length <= end

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer) - self._start
