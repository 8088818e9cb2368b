"""What the transfer engine needs of the file system (``Storage``; ``shell/storage.py`` is
the disk's) and which names it may use in the receive directory."""

from __future__ import annotations

import os
from typing import Any, Protocol

from .messages import valid_filename
from .transfer_digest import Checkpoint

MAX_NAME_BYTES = 255  # a file name's limit on Linux and most file systems (NAME_MAX)


# --- file access -------------------------------------------------------------------------

class Source(Protocol):
    """A file being sent, opened once for every audience member of one command."""

    size: int

    def read_at(self, buffer: memoryview, offset: int) -> int:
        """Read up to ``len(buffer)`` bytes at ``offset`` into ``buffer``; 0 at the end."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A temporary file being received."""

    def write(self, chunks: list[memoryview]) -> None:
        """Append every byte of ``chunks``, in order (raises OSError, e.g. a full disk)."""
        ...

    def close(self) -> None: ...


class Storage(Protocol):
    """The file system as the engine sees it; every method may raise OSError.

    Received files live in one directory; ``create``, ``commit`` and ``discard`` take plain
    names inside it (the engine has checked them: no separator, no ``..``).
    """

    def open_source(self, path: str) -> Source: ...

    def create(self, name: str) -> Sink:
        """Create ``name`` exclusively (never an existing file, never through a link)."""
        ...

    def commit(self, temporary: str, final: str) -> None:
        """Rename ``temporary`` to ``final`` atomically, replacing any file of that name."""
        ...

    def discard(self, name: str) -> None:
        """Delete ``name`` and its resume record; nothing if they are already gone."""
        ...

    def checkpoint(self, name: str, size: int, point: Checkpoint) -> None:
        """Record that the first ``point.offset`` bytes of ``name`` are written, and their
        digest (``core.transfer_digest``)."""
        ...

    def resume(self, name: str, size: int) -> tuple[int, Any, Sink] | None:
        """The recorded partial copy ``name`` of a ``size``-byte file, if its bytes check out
        (``core.transfer_digest.PrefixCheck``): (bytes held, a ``hashlib.sha256`` fed exactly
        them, a sink appending after them)."""
        ...


# --- names and lines ---------------------------------------------------------------------

def safe_component(name: str) -> bool:
    """True if ``name`` can be part of a file name in the receive directory: printable
    (so no NUL and no control character), no ``/`` or ``\\``, no ``..``, not ``.``."""
    return valid_filename(name)


def refusal(presenter: str, filename: str) -> str | None:
    """Why ``PRESENTER_FILENAME`` cannot be saved in the receive directory, or None."""
    if not safe_component(filename):
        return "unsafe file name"
    if not safe_component(presenter):
        return "unsafe presenter name"
    if len(os.fsencode(f"{presenter}_{filename}")) > MAX_NAME_BYTES:
        return "the file name is too long"
    return None


def temporary_name(final: str, transfer_id: bytes | None = None) -> str:
    """Where ``final`` is written until verified: hidden; unique to the transfer if an id is
    given (another transfer of that name is using the resumable one, ``.FINAL.part``)."""
    name = f".{final}.part" if transfer_id is None else f".{final}.{transfer_id.hex()}.part"
    if len(os.fsencode(name + ".resume.new")) > MAX_NAME_BYTES:
        name = f".tessenger.{(transfer_id or os.fsencode(final)[:16]).hex()}.part"
    return name
