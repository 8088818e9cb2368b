"""The server's console: lines for the operator, written without ever blocking the loop.

A terminal the operator paused with Ctrl-S, or a pipe nobody reads (``server.py ... | less``
left alone), would block a plain ``write`` once the kernel's buffer is full, and with it every
user. The console writes through a descriptor of its own in non-blocking mode, keeps what the
output did not take in a bounded buffer, and when that is full drops new lines and counts them:
serving users always wins over printing. The count is printed as soon as there is room again.
"""

from __future__ import annotations

import os
import selectors
import stat
from typing import TextIO

CAPACITY = 256 * 1024  # bytes of console output held while the output does not take them


def _own_descriptor(stream: TextIO) -> tuple[int, bool] | None:
    """A non-blocking descriptor for ``stream``'s output and whether the selector can watch it;
    None when it has no descriptor (a StringIO)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return os.dup(fd), False  # a file takes a write at once (and epoll cannot watch one)
    try:
        # a new open file description of the same pipe or terminal: O_NONBLOCK on it leaves the
        # original, shared with the shell and stderr, as it was
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC), True
    except OSError:
        pass
    duplicate = os.dup(fd)  # a socket: the flag is shared with the original; restored at close
    os.set_blocking(duplicate, False)
    return duplicate, True


class Console:
    def __init__(self, stream: TextIO | None, capacity: int = CAPACITY) -> None:
        self.stream = stream
        self.capacity = capacity
        own = _own_descriptor(stream) if stream is not None else None
        self.fd, self.watchable = own if own is not None else (None, False)
        self.pending = bytearray()
        self.dropped = 0
        self._watched: int | None = None  # the descriptor while a selector watches it

    def say(self, lines: list[str]) -> None:
        """Queue ``lines``, or count them as dropped where the buffer has no room."""
        if self.stream is None:
            return
        if self.fd is None:
            self._write_stream(lines)
            return
        for line in lines:
            data = (line + "\n").encode("utf-8", "replace")
            self._count_dropped(len(data))
            if self.dropped or len(self.pending) + len(data) > self.capacity:
                self.dropped += 1  # kept in order: none after a gap before the gap is told
            else:
                self.pending += data

    def _count_dropped(self, then: int = 0) -> None:
        """Once there is room (for the count and ``then`` bytes after it), tell how many lines
        were dropped."""
        if self.dropped:
            note = f"{self.dropped} console lines dropped\n".encode()
            if len(self.pending) + len(note) + then <= self.capacity:
                self.pending += note
                self.dropped = 0

    def write(self) -> bool:
        """Write what the output takes now; True while some is left."""
        if self.fd is None or not self.pending:
            return False
        try:
            written = os.write(self.fd, self.pending)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # the terminal or pipe is gone (EIO, EPIPE): serving matters more
            self._lose()
            return False
        del self.pending[:written]
        self._count_dropped()
        return bool(self.pending)

    def write_watched(self, selector: selectors.BaseSelector) -> None:
        """Write what the output takes now; have ``selector`` wait for it to take more (with this
        console as the key's data) only while some is left."""
        watch = self.fd if self.write() and self.watchable else None
        if watch != self._watched:
            if self._watched is not None:
                selector.unregister(self._watched)
            if watch is not None:
                selector.register(watch, selectors.EVENT_WRITE, self)
            self._watched = watch

    def _write_stream(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except OSError:
            self.stream = None

    def _lose(self) -> None:
        self.close()
        self.stream = None
        self.pending.clear()

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.set_blocking(self.fd, True)
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
