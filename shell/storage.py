"""``core.transfers.Storage`` on the disk: files sent, files received, partial copies kept
for resuming (moved here from client.py).

A file being received is written to a hidden ``.NAME.part``; beside it ``.NAME.part.resume``
(the sidecar) records, at most once a second, how many bytes from the start are written and
their digest (``core.transfer_digest.Checkpoint``). An interrupted transfer leaves both; when
the same file is offered again, ``resume`` re-reads that prefix, and only if its digest is the
recorded one (the bytes on disk are the bytes received) cuts the file there and appends to it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from typing import Any

from core.transfer_digest import Checkpoint, PrefixCheck

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
SIDECAR = ".resume"  # appended to a partial file's name
PARTIAL = ".part"
HASH_BLOCK = 1 << 20


class DiskSource:
    """A file being sent: opened once, read at each sender's own offset (``preadv``)."""

    def __init__(self, path: str) -> None:
        # O_NONBLOCK: opening a FIFO must not block the loop (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.size = status.st_size

    def read_at(self, buffer: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buffer], offset)

    def close(self) -> None:
        os.close(self.fd)


class DiskSink:
    """A temporary file being received, written straight from the datagrams by ``writev``."""

    def __init__(self, path: str, *, append: bool = False) -> None:
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if append:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | nofollow
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | nofollow
        self.fd = os.open(path, flags, 0o666)

    def write(self, chunks: list[Any]) -> None:
        write_chunks(self.fd, chunks)

    def close(self) -> None:
        os.close(self.fd)


def write_chunks(fd: int, chunks: list[Any]) -> None:
    """Write the pieces of a Data event straight from the datagrams, a writev at a time."""
    start = 0
    while start < len(chunks):
        written = os.writev(fd, chunks[start:start + IOV_MAX])
        while written:  # a short write leaves the rest of the pieces for the next round
            head = chunks[start]
            if written < len(head):
                chunks[start] = head[written:]
                break
            written -= len(head)
            start += 1


class DiskStorage:
    """Received files go to ``directory`` (a path, or a ``shell.receive_dir.ReceiveDirectory``
    named only once the user is known); names passed in are plain names inside it.

    ``keep_partial``: seconds; the first time a file is received into a directory, partial
    files there untouched for longer are deleted (``clean_stale``) -- in effect at the
    client's start, for the directory is known only after login."""

    def __init__(self, directory: str | os.PathLike[str], *, keep_partial: float | None = None) -> None:
        self.directory = directory
        self.keep_partial = keep_partial
        self._swept: set[str] = set()

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _sweep(self) -> None:
        if self.keep_partial is None:
            return
        directory = os.fspath(self.directory)
        if directory not in self._swept:
            self._swept.add(directory)
            self.clean_stale(self.keep_partial)

    def open_source(self, path: str) -> DiskSource:
        return DiskSource(path)

    def create(self, name: str) -> DiskSink:
        self._sweep()
        return DiskSink(self._path(name))

    def commit(self, temporary: str, final: str) -> None:
        os.replace(self._path(temporary), self._path(final))
        self._unlink(temporary + SIDECAR)

    def discard(self, name: str) -> None:
        self._unlink(name)
        self._unlink(name + SIDECAR)

    def checkpoint(self, name: str, size: int, point: Checkpoint) -> None:
        """Record that the first ``point.offset`` bytes of ``name`` (of ``size``) are written,
        and their digest: written to a temporary file and renamed, so a kill at any moment
        leaves the old record or the new one, never half of one."""
        record = json.dumps({"size": size, "offset": point.offset, "base": point.base, "chunk": point.chunk,
                             "digest": point.digest.hex(), "transfer_id": point.transfer_id.hex(),
                             "key": point.key.hex() if point.key is not None else None})
        temporary = self._path(name + SIDECAR + ".new")
        # owner-only: the record holds the (spent) transfer key its digest was computed under
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as file:
            file.write(record)
        os.replace(temporary, self._path(name + SIDECAR))

    def resume(self, name: str, size: int) -> tuple[int, Any, DiskSink] | None:
        """The partial copy ``name`` of a ``size``-byte file, if one is recorded and its bytes
        check out: (bytes held, a SHA-256 object fed them, a sink appending after them)."""
        self._sweep()
        try:
            with open(self._path(name + SIDECAR)) as file:
                record = json.load(file)
            key = record["key"]
            point = Checkpoint(record["offset"], record["base"], record["chunk"], bytes.fromhex(record["digest"]),
                               bytes.fromhex(record["transfer_id"]), None if key is None else bytes.fromhex(key))
            offset = point.offset
            if record["size"] != size or not 0 < offset <= size:
                return None
            fd = os.open(self._path(name), os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            check = PrefixCheck(point)
            buffer = memoryview(bytearray(HASH_BLOCK))
            position = 0
            while position < offset:
                got = os.preadv(fd, [buffer[: min(HASH_BLOCK, offset - position)]], position)
                if not got:
                    return None  # shorter than recorded
                check.update(buffer[:got])
                position += got
            if not check.matches():
                return None
            os.ftruncate(fd, offset)  # anything written after the last record is sent again
        finally:
            os.close(fd)
        return offset, check.plain, DiskSink(self._path(name), append=True)

    def clean_stale(self, max_age: float, now: float | None = None) -> list[str]:
        """Delete partial files and their records not touched for ``max_age`` seconds (a
        transfer that was never resumed); the names deleted."""
        now = time.time() if now is None else now
        removed: list[str] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return removed
        for name in names:
            if not name.startswith(".") or not (name.endswith(PARTIAL) or PARTIAL + SIDECAR in name):
                continue
            try:
                if now - os.lstat(self._path(name)).st_mtime > max_age:
                    os.unlink(self._path(name))
                    removed.append(name)
            except OSError:
                pass
        return removed

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
