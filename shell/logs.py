"""The server's log files on disk, and what a full, read-only or failing disk does to them.

Message lines are appended once per file per loop turn, with one ``write`` each (and an
``fsync`` with ``--fsync``). A write that fails (ENOSPC, EDQUOT, EIO, EROFS, no inodes) is
undone: the file is cut back to its last whole line, so the log never holds a torn or half
turn, and ``flush`` names the logs that could not take their lines, for the server to refuse
the requests behind them. Nothing is retried here: the next turn's lines try again, which is
how the server recovers once space is back. Where even the cut fails, the next write cuts
first; the start-up repair handles what a crash leaves.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core import logformat

MAX_OPEN_LOGS = 64  # groups are unbounded in number; the log files held open must not be


class Disk:
    """The file operations the logs use: the real ones (tests pass a layer that fails)."""

    def open(self, path: Path, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def remove(self, path: Path) -> None:
        os.unlink(path)


@dataclass(slots=True)
class _Open:
    fd: int
    size: int  # the end of its last whole line
    torn: bool = False  # bytes past ``size`` that a failed write left and could not cut


class Logs:
    """The message logs: repaired and scanned at start, appended once per file per turn."""

    def __init__(self, directory: Path, fsync: bool, disk: Disk | None = None) -> None:
        self.directory = directory
        self.fsync = fsync
        self.disk = disk or Disk()
        self._files: dict[str, _Open] = {}  # open logs, least recently written first
        self._pending: defaultdict[str, list[str]] = defaultdict(list)
        self.failing: dict[str, str] = {}  # file -> why it cannot be written now
        self.events: list[str] = []  # console lines: a file fails, a file works again

    def recover(self) -> dict[str, int]:
        """Cut torn last lines left by a crash; return each log's last message number."""
        history: dict[str, int] = {}
        for path in self.directory.iterdir():
            if path.name != logformat.MESSAGELOG and logformat.group_of_log(path.name) is None:
                continue
            with open(path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                offset = max(0, size - logformat.TAIL_BYTES)
                f.seek(offset)
                scan = logformat.scan_log(f.read(), offset)
                if scan.whole_length < size:
                    f.truncate(scan.whole_length)
            history[path.name] = scan.last_number
        return history

    def append(self, log: str, line: str) -> None:
        self._pending[log].append(line)

    def flush(self) -> set[str]:
        """Write the turn's lines, one write per file, before any reply leaves; return the files
        that could not take them (each left as it was before the turn)."""
        # taken before writing: a flush cut short (a signal) is never repeated by the flush at
        # shutdown, which would write its lines twice
        pending, self._pending = self._pending, defaultdict(list)
        failed: set[str] = set()
        for log, lines in pending.items():
            if not self._write(log, "".join(lines).encode("utf-8")):
                failed.add(log)
        return failed

    def _write(self, log: str, data: bytes) -> bool:
        disk = self.disk
        f: _Open | None = None
        try:
            f = self._open(log)
            if f.torn:
                disk.truncate(f.fd, f.size)
                f.torn = False
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += disk.write(f.fd, view[written:])
            if self.fsync:
                disk.fsync(f.fd)
        except OSError as exc:
            if f is not None:
                self._cut(f)
            self._failed(log, exc)
            return False
        f.size += len(data)
        self._recovered(log)
        return True

    def _cut(self, f: _Open) -> None:
        """Take back what a failed write left past the last whole line."""
        try:
            self.disk.truncate(f.fd, f.size)
        except OSError:
            f.torn = True  # cut before the next write instead

    def _open(self, log: str) -> _Open:
        f = self._files.pop(log, None)
        if f is None:
            if len(self._files) >= MAX_OPEN_LOGS:
                self.disk.close(self._files.pop(next(iter(self._files))).fd)
            fd = self.disk.open(self.directory / log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                f = _Open(fd, self.disk.size(fd))
                if self.fsync:
                    self._sync_directory()  # a new file's name must survive a power cut as well
            except OSError:
                self.disk.close(fd)
                raise
        self._files[log] = f  # now the most recently written
        return f

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            self.disk.fsync(fd)
        finally:
            os.close(fd)

    def _failed(self, name: str, exc: OSError) -> None:
        if name not in self.failing:
            self.events.append(f"Cannot write {name}: {exc.strerror or exc}; retrying with the next request")
        self.failing[name] = exc.strerror or str(exc)

    def _recovered(self, name: str) -> None:
        if self.failing.pop(name, None) is not None:
            self.events.append(f"{name} can be written again")

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            self.disk.close(f.fd)
        self._files.clear()

    def write_userlog(self, content: str | memoryview) -> bool:
        """Replace ``userlog.txt`` atomically (a reader sees the old file or the new one) with
        ``content`` (text, or its UTF-8 bytes); False when it cannot be written now, the old
        file left in place."""
        target = self.directory / logformat.USERLOG
        temporary = target.with_name(logformat.USERLOG + ".tmp")
        disk = self.disk
        fd = None
        try:
            fd = disk.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            view = memoryview(content.encode("utf-8") if isinstance(content, str) else content)
            written = 0
            while written < len(view):
                written += disk.write(fd, view[written:])
            disk.close(fd)
            fd = None
            disk.replace(temporary, target)
        except OSError as exc:
            if fd is not None:
                disk.close(fd)
            try:
                disk.remove(temporary)  # give back the space it took
            except OSError:
                pass
            self._failed(logformat.USERLOG, exc)
            return False
        self._recovered(logformat.USERLOG)
        return True
