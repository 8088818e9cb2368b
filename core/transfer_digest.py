"""The end-to-end digest of a UDP file transfer, and the check of a partial copy kept for
resuming one (PROTOCOL.md section 6.4).

Each chunk of the file is hashed once, where it is sent and where it arrives: its DATA
datagram (without the tag) is fed to SHA-256 after the transfer's key block
(``core.transfer_wire.Mac``), and that one 32-byte digest, the chunk's **term**, gives both
the datagram's tag (its first 16 bytes) and the chunk's place in the digest of the whole
file, a hash list over the terms in order (as BitTorrent's pieces):

    digest = SHA-256( SHA-256(file[0 : base]) || term 0 || term 1 || ... )
    term i = SHA-256( key block || DATA header of chunk i || chunk i )

``base`` is what the receiver held already from an interrupted transfer (0 without one: the
first term is then SHA-256 of nothing), and chunk ``i`` is ``file[base + i*c : base + (i+1)*c]``
for the transfer's chunk size ``c`` (the last one may be shorter). A transfer without a key
(benchmarks and tests) hashes the datagram alone. The digest depends on the file's bytes,
``base``, ``c``, the transfer id and key, all of which both sides know; SHA-256 being
collision resistant, two files with the same digest (same base, chunk size, id and key) are
the same file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from core.transfer_wire import DATA, KEY_SIZE, MAGIC, TRANSFER_ID_SIZE, Kind, keyed_sha256

EMPTY_PREFIX = hashlib.sha256().digest()  # SHA-256 of the no bytes held before chunk 0
_sha256 = hashlib.sha256


def chunk_term(keyed: Any, header: bytes | memoryview, chunk: bytes | memoryview) -> bytes:
    """A chunk's term: ``keyed`` (``keyed_sha256`` of the transfer's key) fed its DATA
    datagram without the tag, ``header`` then ``chunk``. The sender, the receiver and the
    check of a partial copy all compute it here."""
    term = keyed.copy()
    term.update(header)
    term.update(chunk)
    digest: bytes = term.digest()
    return digest


def hash_list(prefix_digest: bytes) -> Any:
    """The running digest of a transfer: a SHA-256 object fed ``prefix_digest`` (the SHA-256
    of the bytes held before chunk 0); feed it each chunk's digest in order."""
    return _sha256(prefix_digest)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a download got, as ``Storage.checkpoint`` records it for a resume: the first
    ``offset`` bytes are written, of which the first ``base`` came from an earlier partial
    copy and the rest in ``chunk``-byte chunks of transfer ``transfer_id`` under ``key``;
    ``digest`` is their hash list (above).

    The key is kept beside the partial file to recompute the terms: it authenticated only
    that transfer's datagrams, and a resumed transfer has an id and key of its own."""

    offset: int
    base: int
    chunk: int
    digest: bytes
    transfer_id: bytes
    key: bytes | None

    def __post_init__(self) -> None:
        """A record read back from disk is checked here, once: ``PrefixCheck`` relies on it."""
        numbers = (self.offset, self.base, self.chunk)
        if not all(type(n) is int for n in numbers) or not 0 <= self.base <= self.offset or self.chunk < 0 \
                or (self.offset > self.base and not self.chunk):
            raise ValueError(f"not a resume point: {numbers}")
        if len(self.transfer_id) != TRANSFER_ID_SIZE or (self.key is not None and len(self.key) != KEY_SIZE):
            raise ValueError("not a resume point: a transfer id or key of the wrong size")


class PrefixCheck:
    """Recomputes a ``Checkpoint``'s digest from the partial file's bytes, fed from its start
    in blocks of any size, and the plain SHA-256 of them all (``plain``, which the next HELLO
    reports and the sender checks against its own file)."""

    def __init__(self, point: Checkpoint) -> None:
        self.plain = _sha256()
        self._point = point
        self._keyed = keyed_sha256(point.key)
        self._index = 0  # of the chunk being gathered
        self._fed = 0
        self._list: Any = hash_list(EMPTY_PREFIX) if point.base == 0 else None
        self._piece = bytearray()  # bytes of the chunk being gathered

    def update(self, block: bytes | memoryview) -> None:
        view = memoryview(block).cast("B")
        base = self._point.base
        if self._fed < base:
            head = view[: base - self._fed]
            self.plain.update(head)
            self._fed += len(head)
            view = view[len(head) :]
            if self._fed == base:
                self._list = hash_list(self.plain.digest())
        if not view:
            return
        self.plain.update(view)
        self._fed += len(view)
        chunk, piece, digests = self._point.chunk, self._piece, self._list
        while view:
            take = chunk - len(piece) if chunk else len(view)  # no chunks: only bytes past offset
            piece += view[:take]
            view = view[take:]
            if len(piece) == chunk:
                digests.update(self._term(piece))
                piece.clear()
                self._index += 1

    def matches(self) -> bool:
        """True if exactly ``offset`` bytes were fed and their hash list is the recorded one."""
        point = self._point
        if self._fed != point.offset or self._list is None:
            return False
        digests = self._list.copy()
        if self._piece:
            digests.update(self._term(self._piece))
        return bool(digests.digest() == point.digest)

    def _term(self, piece: bytearray) -> bytes:
        """The term of the chunk being gathered, ``piece``."""
        point = self._point
        return chunk_term(self._keyed, DATA.pack(MAGIC, Kind.DATA, point.transfer_id, self._index, point.chunk), piece)
