"""What both sides of a UDP file transfer share (``core.transfer`` describes the protocol).

Datagram sizes and timing constants, the states and events a transfer reports, and
``_Endpoint``, the base of ``Sender`` (``core.transfer``) and ``Receiver``
(``core.transfer_receiver``): identity, the outgoing queue, events, the ending and lingering.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Sequence, TypeVar, Union

from core import transfer_wire as wire
from core.transfer_wire import Kind

LOOPBACK_DATAGRAM_SIZE = wire.MAX_DATAGRAM
ETHERNET_DATAGRAM_SIZE = 1_472
MIN_DATAGRAM_SIZE = wire.DATA_HEADER_SIZE + 64  # smaller chunks only multiply per-datagram cost
DEFAULT_WINDOW = 6 * 1024 * 1024
# Whatever window a receiver advertises, a sender keeps at most this many bytes of DATA
# datagrams for resending (without it, a hostile HELLO could pin 8,192 x 64 KiB = 550 MB).
DEFAULT_MAX_IN_FLIGHT = 64 * 1024 * 1024
GIVE_UP = 10.0
MIN_RTO = 0.03
INITIAL_RTO = 0.2
MAX_RTO = 1.0
ACK_DELAY = 0.005
HELLO_INTERVAL = 0.05
REPLY_INTERVAL = 0.01
MAX_WINDOW_CHUNKS = wire.MAX_SACK_BYTES * 8  # what one ACK's bitmap can describe
_MAX_CHUNKS = wire.NO_CHUNK - 1  # chunk counts and indices are 32-bit on the wire
_CLOCK_GRANULARITY = 0.001
# Plain ints for the hot paths: an IntEnum member costs an attribute lookup each time.
_HEADER = wire.DATA_HEADER_SIZE
_DATA = int(Kind.DATA)
_ACK = int(Kind.ACK)
_FIN = int(Kind.FIN)
_ABORT = int(Kind.ABORT)
_MAGIC = wire.MAGIC
_COMMON_SIZE = wire.COMMON.size
_data_fields = wire.DATA_FIELDS.unpack_from
_NOTHING: tuple[bytes, ...] = ()


def datagram_size_for(peer_ip: str) -> int:
    """The DATA datagram size to use towards ``peer_ip``; the client's flag overrides it.

    Loopback carries a 65,507-byte UDP payload in one IP packet (its MTU is 64 KiB), and
    per-datagram costs (a system call, a few Python calls) dominate a Python sender, so the
    largest datagram is the fastest by far: about 2.5 GB/s raw here against ~190 MB/s at
    1,400 bytes. On any other path a datagram above 1,472 bytes (Ethernet's 1,500-byte MTU
    less 28 bytes of IP and UDP headers) would be split into IP fragments: losing any
    fragment loses the whole datagram, and some networks drop fragments outright.
    """
    try:
        loopback = ipaddress.ip_address(peer_ip).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_DATAGRAM_SIZE if loopback else ETHERNET_DATAGRAM_SIZE


def footprint(datagram_size: int) -> int:
    """An upper bound on what Linux charges a socket's receive buffer for one datagram.

    The kernel counts each queued datagram by its buffer's true size, not its payload:
    measured here, 1,400 bytes cost 2,305 (the data area is rounded up to a power of two
    and ~650 bytes of bookkeeping added); 7,900 bytes cost 16,644; above ~16 KiB the data
    lives in pages and the overhead is ~2 KiB (65,507 bytes cost 67,650). Overestimating
    only shrinks the window a little; underestimating would overflow the buffer.
    """
    linear = datagram_size + 512
    if linear <= 16_384:
        return (1 << (linear - 1).bit_length()) + 512
    return datagram_size + 4_096


class State(Enum):
    SETUP = "setup"  # sender: waiting for HELLO; receiver: sending HELLO, waiting for data
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Progress:
    """The receiver has acknowledged ``acked`` of ``size`` bytes."""

    acked: int
    size: int


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to build, and this is hot
class Data:
    """The next in-order bytes of the file, in pieces: ``file.writelines(event.chunks)``.

    One event gathers every chunk delivered between two calls of ``events()``; each piece
    is a view into the datagram it came in.
    """

    chunks: list[memoryview]


@dataclass(frozen=True, slots=True)
class Completed:
    """Sender: the receiver verified the digest. Receiver: the digest matched."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The transfer is over and did not succeed; ``reason`` is short and printable."""

    reason: str


SenderEvent = Union[Progress, Completed, Failed]
ReceiverEvent = Union[Data, Completed, Failed]
_Event = TypeVar("_Event", SenderEvent, ReceiverEvent)


class _Endpoint(Generic[_Event]):
    """What both sides share: identity, outgoing queue, events, the ending and lingering.

    After Completed or Failed a side lingers for ``give_up`` seconds to answer the peer's
    retransmissions (DONE or ABORT), so the peer learns the outcome even if the first answer
    was lost; then ``closed`` turns true and the shell may forget the object. (A completed
    sender has nothing to answer and is closed at once.)
    """

    def __init__(self, transfer_id: bytes, now: float, give_up: float, key: bytes | None) -> None:
        if len(transfer_id) != wire.TRANSFER_ID_SIZE:
            raise ValueError(f"a transfer id has {wire.TRANSFER_ID_SIZE} bytes, not {len(transfer_id)}")
        if give_up <= 0:
            raise ValueError("give_up must be positive")
        self.transfer_id = bytes(transfer_id)
        # Keyed: every datagram out carries a tag, every datagram in without the right one is
        # dropped before anything else looks at it. Unkeyed (None) only for benchmarks/tests.
        self._mac = wire.Mac(key) if key is not None else None
        self._tag = wire.TAG_SIZE if key is not None else 0
        self._key = key
        # A DATA's digest (its tag and its chunk's term in the file's digest) is this object's
        # copy fed the datagram: core.transfer_digest.chunk_term.
        self._keyed = wire.keyed_sha256(key)
        self.state = State.SETUP
        self.closed = False
        self._over = False  # Completed or Failed: only lingering is left
        self._give_up = give_up
        self._last_heard = now  # last valid datagram from the peer (receiver) / progress (sender)
        self._out: list[bytes] = []
        self._events: list[_Event] = []
        self._linger_until = 0.0
        self._reply_after = 0.0
        self._reply = b""

    def datagrams_to_send(self) -> Sequence[bytes]:
        """Datagrams to send to the peer now, in order; the queue is emptied.

        Costs next to nothing when there are none, so the shell can ask after every
        ``receive`` and send ACKs at once rather than after a whole batch of reads.
        """
        out = self._out
        if not out:
            return _NOTHING
        self._out = []
        return out

    def events(self) -> list[_Event]:
        """Events since the last call, in order; the list is emptied."""
        events = self._events
        self._events = []
        return events

    def abort(self, reason: str, now: float, *, tell_peer: bool = True) -> None:
        """Fail at the shell's request (file error, user left...) and tell the peer why
        (not when the server said the peer is gone)."""
        if not self._over:
            self._fail(reason, now, tell_peer=tell_peer)

    def _seal(self, body: bytes) -> bytes:
        return wire.seal(body, self._mac)

    def _accepted(self, datagram: bytes, now: float) -> bytes | None:
        """``datagram`` without its tag if it is this transfer's, authentic and still to be
        acted on; None if it is to be ignored or was answered by lingering."""
        if len(datagram) < _COMMON_SIZE or datagram[0] != _MAGIC or datagram[2:18] != self.transfer_id:
            return None
        mac = self._mac
        if mac is not None:
            if not mac.check(datagram):
                return None
            datagram = datagram[: -wire.TAG_SIZE]
        if self._over:
            self._linger(datagram[1], now)
            return None
        return datagram

    def _fail(self, reason: str, now: float, *, tell_peer: bool) -> None:
        abort = self._seal(wire.encode_abort(self.transfer_id, reason))
        if tell_peer:
            self._out.append(abort)
        self._end(State.FAILED, Failed(wire.sanitize_reason(reason)), abort, now)

    def _end(self, state: State, event: Completed | Failed, reply: bytes, now: float) -> None:
        self.state = state
        self._over = True
        self._events.append(event)
        self._reply = reply
        self._linger_until = now + self._give_up
        self.closed = not reply  # nothing to answer the peer with: no reason to linger
        self._release()

    def _release(self) -> None:
        """Drop buffered chunks once the outcome is known."""

    def _linger(self, kind: int, now: float) -> None:
        """Answer a finished transfer's datagram with its outcome, at a bounded rate."""
        if kind != _ABORT and self._reply and now >= self._reply_after:
            self._out.append(self._reply)
            self._reply_after = now + REPLY_INTERVAL

    def _linger_deadline(self) -> float | None:
        return None if self.closed else self._linger_until

    def _linger_timer(self, now: float) -> None:
        if now >= self._linger_until:
            self.closed = True
