"""Datagram layout of the peer-to-peer UDP file transfer (PROTOCOL.md section 6).

Every datagram starts with the same 18 bytes: a magic/version byte, a kind byte and the
16-byte transfer id the chat server issued. All integers are big-endian. Decoders return
``None`` for anything malformed; nothing here raises on bytes that came off the network.

With a transfer key (issued by the server beside the transfer id), every datagram ends
with a ``TAG_SIZE``-byte tag under the key (``Mac``) over every byte before it. The state
machines check the tag before anything else and hand the decoders the datagram without it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from enum import IntEnum
from typing import Any

MAGIC = 0x71  # byte 0: "this is TESSENGER transfer protocol version 1"; anything else is dropped
TRANSFER_ID_SIZE = 16
MAX_DATAGRAM = 65_507  # largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP)
MAX_SACK_BYTES = 1_024  # an ACK's bitmap covers 8,192 chunks and the ACK fits one Ethernet frame
MAX_REASON_BYTES = 200
NO_CHUNK = 0xFFFF_FFFF  # an ACK's trigger when no DATA prompted it
KEY_SIZE = 32  # bytes of a transfer key (64 hex digits on the chat connection)
TAG_SIZE = 16  # bytes of the MAC at the end of every datagram of a keyed transfer


class Kind(IntEnum):
    HELLO = 1  # receiver -> sender: ready; receive window and largest datagram accepted
    DATA = 2  # sender -> receiver: one chunk of the file
    ACK = 3  # receiver -> sender: cumulative chunk count plus a bitmap of chunks held beyond it
    FIN = 4  # sender -> receiver: total size and the digest of the whole file (core.transfer_digest)
    DONE = 5  # receiver -> sender: the digest of what it received matched; carries that digest
    ABORT = 6  # either way: the transfer is over and failed; carries a short reason


_FIRST_KIND = int(Kind.HELLO)  # plain ints: peek_transfer_id runs for every datagram
_LAST_KIND = int(Kind.ABORT)

COMMON = struct.Struct("!BB16s")
_COMMON_SIZE = COMMON.size
# window (bytes of receive buffer granted), max datagram, resume offset (bytes of the file
# the receiver already holds, from its start) and the SHA-256 of those bytes
HELLO = struct.Struct("!BB16sIIQ32s")
DATA = struct.Struct("!BB16sII")  # chunk index, chunk size; the payload follows
ACK = struct.Struct("!BB16sII")  # chunks received in order, trigger; the SACK bitmap follows
_ACK_FIELDS = struct.Struct("!II")
FIN = struct.Struct("!BB16sQ32s")  # file size, the file's digest (core.transfer_digest)
DONE = struct.Struct("!BB16s32s")  # the digest of the bytes received

DATA_HEADER_SIZE = DATA.size
DATA_FIELDS = struct.Struct("!II")  # a DATA's chunk index and chunk size, at offset 18


def peek_transfer_id(datagram: bytes) -> bytes | None:
    """The transfer id of a datagram of this protocol, or None if it is not one.

    The shell uses it to route a datagram to its Sender or Receiver; the state machine
    then checks everything else.
    """
    if len(datagram) >= _COMMON_SIZE and datagram[0] == MAGIC and _FIRST_KIND <= datagram[1] <= _LAST_KIND:
        return datagram[2:18]
    return None


_compare_digest = hmac.compare_digest  # constant time: a tag is never compared byte by byte
KEY_BLOCK = 64  # SHA-256's block: the key, zero-padded, fills the first one


def keyed_sha256(key: bytes | None) -> Any:
    """A ``hashlib.sha256`` object already fed the transfer's key, zero-padded to one block
    (or nothing, without a key): copy it and feed a datagram to get its ``Mac`` digest.
    The key's block is compressed once per transfer, not once per datagram."""
    return hashlib.sha256(key.ljust(KEY_BLOCK, b"\0")) if key is not None else hashlib.sha256()


class Mac:
    """AMAC with SHA-256 under one transfer's key: a datagram's tag is the first 16 bytes
    (128 bits) of SHA-256(key block || every byte of the datagram before the tag).

    AMAC -- a secret key prefix, a Merkle-Damgard hash, the output truncated -- is proven a
    PRF, so a MAC, in the ideal-compression-function model (Bellare, Bernstein and Tessaro,
    "Hash-function based PRFs: AMAC and its multi-user security", Eurocrypt 2016; Ed25519
    uses it with SHA-512). Truncation hides half of SHA-256's final state, so a tag cannot be
    extended to a longer message as an untruncated SHA-256(key || m) can.

    It needs one pass over the datagram, where HMAC or hash-then-MAC needs a second, keyed
    hash after it; and a DATA's whole 32-byte digest is at once its tag's source and its
    chunk's term in the file's digest (``core.transfer_digest``): at 1,400-byte datagrams a
    keyed transfer hashes no more than an unkeyed one.
    """

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a transfer key has {KEY_SIZE} bytes, not {len(key)}")
        self._keyed = keyed_sha256(key)

    def digest(self, message: bytes | memoryview) -> bytes:
        """SHA-256(key block || ``message``): its first ``TAG_SIZE`` bytes are the tag."""
        keyed = self._keyed.copy()
        keyed.update(message)
        return keyed.digest()

    def seal(self, body: bytes) -> bytes:
        """``body`` with its tag appended."""
        return body + self.digest(body)[:TAG_SIZE]

    def check(self, datagram: bytes) -> bool:
        """True if ``datagram``, of any kind, ends with the right tag."""
        end = len(datagram) - TAG_SIZE
        if end < _COMMON_SIZE:
            return False
        return _compare_digest(self.digest(memoryview(datagram)[:end])[:TAG_SIZE], datagram[end:])


def seal(body: bytes, mac: Mac | None) -> bytes:
    """``body`` as sent: tagged under ``mac``, or as it is for an unkeyed transfer."""
    return body if mac is None else mac.seal(body)


def encode_hello(transfer_id: bytes, window: int, max_datagram: int, resume: int = 0,
                 prefix_digest: bytes = bytes(32)) -> bytes:
    """``resume`` bytes from the file's start are held already, with SHA-256 ``prefix_digest``."""
    return HELLO.pack(MAGIC, Kind.HELLO, transfer_id, window, max_datagram, resume, prefix_digest)


def encode_ack(transfer_id: bytes, cumulative: int, trigger: int, sack: int) -> bytes:
    """``trigger`` is the chunk whose arrival prompted this ACK (the sender's RTT sample);
    ``sack`` bit i set means chunk ``cumulative + i`` is held (bit 0 is always clear)."""
    return ACK.pack(MAGIC, Kind.ACK, transfer_id, cumulative, trigger) + sack.to_bytes(
        (sack.bit_length() + 7) // 8, "little"
    )


def encode_fin(transfer_id: bytes, size: int, digest: bytes) -> bytes:
    return FIN.pack(MAGIC, Kind.FIN, transfer_id, size, digest)


def encode_done(transfer_id: bytes, digest: bytes) -> bytes:
    return DONE.pack(MAGIC, Kind.DONE, transfer_id, digest)


def encode_abort(transfer_id: bytes, reason: str) -> bytes:
    raw = sanitize_reason(reason).encode()[:MAX_REASON_BYTES]
    return COMMON.pack(MAGIC, Kind.ABORT, transfer_id) + raw


def decode_hello(datagram: bytes) -> tuple[int, int, int, bytes] | None:
    """(window, max_datagram, resume offset, SHA-256 of that prefix) of a well-formed HELLO."""
    if len(datagram) != HELLO.size:
        return None
    _, _, _, window, max_datagram, resume, prefix_digest = HELLO.unpack(datagram)
    return window, max_datagram, resume, prefix_digest


def decode_ack(datagram: bytes) -> tuple[int, int, int] | None:
    """(cumulative, trigger, sack bitmap as an int) of a well-formed ACK."""
    if not ACK.size <= len(datagram) <= ACK.size + MAX_SACK_BYTES:
        return None
    cumulative, trigger = _ACK_FIELDS.unpack_from(datagram, COMMON.size)
    return cumulative, trigger, int.from_bytes(datagram[ACK.size :], "little")


def decode_fin(datagram: bytes) -> tuple[int, bytes] | None:
    """(size, digest) of a well-formed FIN."""
    if len(datagram) != FIN.size:
        return None
    _, _, _, size, digest = FIN.unpack(datagram)
    return size, digest


def decode_done(datagram: bytes) -> bytes | None:
    """The digest of a well-formed DONE."""
    if len(datagram) != DONE.size:
        return None
    digest: bytes = DONE.unpack(datagram)[3]
    return digest


def decode_abort(datagram: bytes) -> str:
    return sanitize_reason(datagram[COMMON.size : COMMON.size + MAX_REASON_BYTES].decode("utf-8", "replace"))


def sanitize_reason(reason: str) -> str:
    """Printable characters only: a peer's reason ends up on the user's terminal."""
    return "".join(c for c in reason if c.isprintable())[:MAX_REASON_BYTES] or "no reason given"
