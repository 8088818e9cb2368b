"""The audience's side of the UDP file transfer: ``Receiver`` (see ``core.transfer``)."""

from __future__ import annotations

import hmac
from typing import Any

from core import transfer_wire as wire
from core.transfer_digest import EMPTY_PREFIX, Checkpoint, chunk_term, hash_list

from .transfer_common import (
    ACK_DELAY, DEFAULT_WINDOW, GIVE_UP, HELLO_INTERVAL, MAX_RTO, MAX_WINDOW_CHUNKS, MIN_DATAGRAM_SIZE,
    _ABORT, _COMMON_SIZE, _DATA, _FIN, _HEADER, _MAGIC, _MAX_CHUNKS, Completed, Data,
    ReceiverEvent, State, _data_fields, _Endpoint, footprint,
)

_compare_digest = hmac.compare_digest  # constant time (unkeyed: two empty strings)


class Receiver(_Endpoint[ReceiverEvent]):
    """The audience's side: receives ``expected_size`` bytes announced by the server.

    Sends HELLO at once and repeats it (backing off) until the sender's first datagram
    arrives. ``window`` is how many bytes of the UDP socket's receive buffer this transfer
    may fill, as the kernel counts them: give it about 3/4 of ``getsockopt(SO_RCVBUF)``
    divided among concurrent incoming transfers. Data past ``expected_size`` (or an
    announced size past ``max_size``) fails the transfer; so does silence from the sender
    for ``give_up`` seconds. Pass each datagram as its own immutable ``bytes``: ``Data``
    events are views into it.
    """

    def __init__(
        self,
        transfer_id: bytes,
        expected_size: int,
        now: float,
        *,
        max_size: int | None = None,
        window: int = DEFAULT_WINDOW,
        max_datagram: int = wire.MAX_DATAGRAM,
        give_up: float = GIVE_UP,
        ack_delay: float = ACK_DELAY,
        key: bytes | None = None,
        resume: int = 0,
        prefix_hash: Any = None,
    ) -> None:
        """``resume``: bytes of the file held already from an interrupted transfer, and
        ``prefix_hash`` a ``hashlib.sha256`` object fed exactly those bytes; the sender then
        sends only the rest, and the digest checked at the end still covers the whole file
        (its first term is that SHA-256: ``core.transfer_digest``)."""
        super().__init__(transfer_id, now, give_up, key)
        if expected_size < 0:
            raise ValueError("expected_size must not be negative")
        if not 0 <= resume <= expected_size or (resume and prefix_hash is None):
            raise ValueError("resume must be 0..expected_size, with the hash of those bytes")
        if not MIN_DATAGRAM_SIZE <= max_datagram <= wire.MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be {MIN_DATAGRAM_SIZE}..{wire.MAX_DATAGRAM}")
        self.size = expected_size
        self.resumed = resume
        self.mismatch = False  # the digest of what arrived was not the sender's
        self._span = expected_size - resume  # the bytes this transfer carries; chunk 0 starts at resume
        self._window = window
        self._max_datagram = max_datagram
        self._ack_delay = ack_delay
        prefix_digest = prefix_hash.digest() if resume else EMPTY_PREFIX
        self._hash = hash_list(prefix_digest)  # fed each chunk's term as it is delivered
        self._chunk = 0  # learnt from the first DATA; every DATA must then agree
        self._total = 0 if self._span == 0 else -1  # chunks to receive, once chunk is known
        self._whole = 0  # chunks 0 .. _whole - 1 are whole chunks; only the last may be shorter
        # What every DATA of this transfer starts with: one startswith() checks magic, kind
        # and transfer id at once, where the general path takes a slice and three compares.
        self._data_prefix = bytes((_MAGIC, _DATA)) + self.transfer_id
        self._window_chunks = 0  # how far beyond the first missing chunk data is buffered
        self._ack_every = 1
        self._cum = 0  # chunks delivered in order
        self._held: dict[int, tuple[memoryview, bytes]] = {}  # chunks beyond a gap, with their terms
        self._held_bits = 0  # bit i: chunk cum + i is in _held
        self._unacked = 0  # chunks received since the last ACK
        self._trigger = wire.NO_CHUNK  # the latest chunk received, named in ACKs
        self._ack_due: float | None = None
        self._digest = b""  # from the FIN
        self._chunks: list[memoryview] | None = None  # of the Data event being gathered
        self._hello = self._seal(wire.encode_hello(self.transfer_id, window, max_datagram, resume,
                                                   prefix_digest if resume else bytes(32)))
        self._hello_interval = HELLO_INTERVAL
        self._hello_due = now + HELLO_INTERVAL
        if max_size is not None and expected_size > max_size:
            self._fail(f"the file ({expected_size} bytes) exceeds the limit of {max_size} bytes", now, tell_peer=True)
        else:
            self._out.append(self._hello)

    @property
    def bytes_received(self) -> int:
        """Bytes of the file held in order so far (those resumed from included)."""
        return self.resumed + min(self._cum * self._chunk, self._span)

    def checkpoint(self) -> Checkpoint:
        """The ``bytes_received`` bytes delivered so far and their digest (a resume point)."""
        return Checkpoint(self.bytes_received, self.resumed, self._chunk, self._hash.copy().digest(),
                          self.transfer_id, self._key)

    def events(self) -> list[ReceiverEvent]:
        self._chunks = None  # the next delivery starts a new Data event
        return super().events()

    def receive(self, datagram: bytes, now: float) -> None:
        """Handle one datagram from the sender; anything malformed, foreign or forged is ignored."""
        if datagram.startswith(self._data_prefix) and not self._over:
            # nearly every datagram: keep its path short. It is hashed once, for its tag and
            # its chunk's term in the file's digest; unkeyed, the tag and its digest's head
            # are both empty.
            end = len(datagram) - self._tag
            view = memoryview(datagram)
            digest = chunk_term(self._keyed, view[:_HEADER], view[_HEADER:end])
            if _compare_digest(digest[: self._tag], datagram[end:]):
                self._on_data(datagram, digest, now)
            return
        accepted = self._accepted(datagram, now)
        if accepted is None:
            return
        datagram = accepted
        kind = datagram[1]
        if kind == _FIN:
            self._on_fin(datagram, now)
        elif kind == _ABORT:
            self._fail(f"sender aborted: {wire.decode_abort(datagram)}", now, tell_peer=False)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or None if no timer is running."""
        if self.state is State.SETUP:
            return min(self._hello_due, self._last_heard + self._give_up)
        if self.state is not State.RUNNING:
            return self._linger_deadline()
        idle = self._last_heard + self._give_up
        return idle if self._ack_due is None else min(idle, self._ack_due)

    def on_timer(self, now: float) -> None:
        """Act on whatever deadline has passed; calling it early or twice is harmless."""
        if self._over:
            self._linger_timer(now)
            return
        if now >= self._last_heard + self._give_up:
            what = "did not start" if self.state is State.SETUP else "sent nothing"
            self._fail(f"the sender {what} for {self._give_up:g} s", now, tell_peer=True)
        elif self.state is State.SETUP:
            if now >= self._hello_due:
                self._out.append(self._hello)
                self._hello_interval = min(self._hello_interval * 2, MAX_RTO)
                self._hello_due = now + self._hello_interval
        elif self._ack_due is not None and now >= self._ack_due:
            self._send_ack()

    # -- protocol ------------------------------------------------------------------------

    def _on_data(self, datagram: bytes, digest: bytes, now: float) -> None:
        """One DATA of this transfer (magic, kind, id and tag already checked), its chunk's
        term ``digest`` (``core.transfer_digest``).

        The common case -- a whole chunk, the next one expected -- takes the fewest steps:
        at 1,400-byte datagrams this runs ~75,000 times for 100 MiB. Anything else takes a
        call.
        """
        length = len(datagram) - _HEADER - self._tag
        if length <= 0:
            return
        index, chunk = _data_fields(datagram, _COMMON_SIZE)
        if chunk != self._chunk and not self._learn_chunk(chunk, now):
            return
        if (length != chunk or index >= self._whole) and not self._valid_tail(index, length, now):
            return
        self._last_heard = now
        self._trigger = index
        if index != self._cum:
            self._on_out_of_order(datagram, digest, index, length, now)
            return
        self._deliver(memoryview(datagram)[_HEADER : _HEADER + length], digest)
        cum = index + 1
        filled = False
        if self._held_bits:
            cum = self._deliver_held(cum)
            filled = cum > index + 1
        self._cum = cum
        if cum == self._total:
            self._all_received(now)
            return
        self._count_for_ack(now, immediately=filled)

    def _valid_tail(self, index: int, length: int, now: float) -> bool:
        """A DATA that is not a whole chunk before the last: only the exact last chunk is
        valid. A truncated one is ignored (the sender resends); one past the announced
        size fails the transfer."""
        chunk = self._chunk
        remaining = self._span - index * chunk  # from this chunk's first byte to the end
        if length == (chunk if remaining > chunk else remaining):
            return True
        if remaining <= 0 or length > min(chunk, remaining):
            self._fail("data beyond the announced size", now, tell_peer=True)
        return False

    def _on_out_of_order(self, datagram: bytes, digest: bytes, index: int, length: int, now: float) -> None:
        """A chunk other than the next expected: a duplicate, or one beyond a gap."""
        cum = self._cum
        offset = index - cum
        if index < cum or (self._held_bits >> offset) & 1:
            self._send_ack()  # a duplicate: our ACK was probably lost or late
        elif offset < self._window_chunks:
            self._held[index] = (memoryview(datagram)[_HEADER : _HEADER + length], digest)
            new_gap = not (self._held_bits >> (offset - 1)) & 1
            self._held_bits |= 1 << offset
            self._count_for_ack(now, immediately=new_gap)
        # beyond the window: the sender overran it; drop the chunk, it will be resent

    def _deliver_held(self, cum: int) -> int:
        """Deliver the held chunks that follow chunk ``cum - 1`` in order; the new ``cum``."""
        bits = self._held_bits >> 1
        held = self._held
        while bits & 1:
            self._deliver(*held.pop(cum))
            cum += 1
            bits >>= 1
        self._held_bits = bits
        return cum

    def _learn_chunk(self, chunk: int, now: float) -> bool:
        """The first DATA fixes the chunk size (every later one must agree), and with it the
        number of chunks, the reordering window and the ACK cadence."""
        if self._chunk:
            self._fail("the sender changed its chunk size", now, tell_peer=True)
            return False
        if not 1 <= chunk <= self._max_datagram - wire.DATA_HEADER_SIZE - self._tag:
            self._fail(f"the sender's chunk size {chunk} is outside the advertised limit", now, tell_peer=True)
            return False
        total = -(-self._span // chunk)
        if total > _MAX_CHUNKS:
            self._fail("the file is too large for the sender's chunk size", now, tell_peer=True)
            return False
        self._chunk = chunk
        self._total = total
        self._whole = self._span // chunk
        self.state = State.RUNNING
        self._window_chunks = max(1, min(self._window // chunk, MAX_WINDOW_CHUNKS))
        # The sender's window in chunks: acknowledge four times per window, so the sender
        # always has room to send while the next ACK is on its way.
        sender_window = max(1, min(self._window // footprint(chunk + wire.DATA_HEADER_SIZE + self._tag),
                                   MAX_WINDOW_CHUNKS))
        self._ack_every = max(1, sender_window // 4)
        return True

    def _deliver(self, payload: memoryview, digest: bytes) -> None:
        self._hash.update(digest)
        chunks = self._chunks
        if chunks is None:
            chunks = self._start_data_event()
        chunks.append(payload)

    def _start_data_event(self) -> list[memoryview]:
        """The Data event that gathers deliveries until the shell next calls ``events()``."""
        chunks: list[memoryview] = []
        self._chunks = chunks
        self._events.append(Data(chunks))
        return chunks

    def _count_for_ack(self, now: float, *, immediately: bool) -> None:
        """ACK at once on a new gap or a filled one, else every ``_ack_every`` chunks or after
        ``ack_delay``, whichever comes first."""
        self._unacked += 1
        if immediately or self._unacked >= self._ack_every:
            self._send_ack()
        elif self._ack_due is None:
            self._ack_due = now + self._ack_delay

    def _send_ack(self) -> None:
        self._out.append(self._seal(wire.encode_ack(self.transfer_id, self._cum, self._trigger, self._held_bits)))
        self._unacked = 0
        self._ack_due = None

    def _all_received(self, now: float) -> None:
        if self._digest:
            self._verify(now)
        else:
            self._send_ack()  # the sender learns everything arrived; its FIN is on the way

    def _on_fin(self, datagram: bytes, now: float) -> None:
        fin = wire.decode_fin(datagram)
        if fin is None:
            return
        size, digest = fin
        self._last_heard = now
        self.state = State.RUNNING
        if size != self.size:
            self._fail(f"the sender has {size} bytes, {self.size} were announced", now, tell_peer=True)
        elif self._cum == self._total:
            self._digest = digest
            self._verify(now)
        else:
            self._digest = digest
            self._send_ack()  # shows the sender what is still missing

    def _verify(self, now: float) -> None:
        if self._hash.digest() == self._digest:
            done = self._seal(wire.encode_done(self.transfer_id, self._digest))
            self._out.append(done)
            self._end(State.COMPLETED, Completed(), done, now)
        else:
            self.mismatch = True
            self._fail("SHA-256 mismatch: the data received differs from the file sent", now, tell_peer=True)

    def _release(self) -> None:
        self._held.clear()
        self._held_bits = 0
        self._ack_due = None
