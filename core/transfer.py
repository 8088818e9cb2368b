"""Reliable file transfer over UDP, as two sans-I/O state machines (docs/udp-transfer.md).

``Sender`` and ``Receiver`` never touch a socket, a file or the clock: the shell (the
client's select loop; ``bench/transfer_loopback.py`` is the model) hands them datagrams and
the current time, asks them for datagrams to send and for the next deadline, and acts on
their events. One loop drives every transfer of a client, in both directions:

    datagram in     -> transfers[peek_transfer_id(dg)].receive(dg, now); send its replies
    deadline passed -> transfer.on_timer(now)
    sender          -> if n := sender.want_data(): sender.feed(next <= n file bytes, now)
    every transfer  -> sendto each of transfer.datagrams_to_send(); act on transfer.events()
    transfer.closed -> forget it

The receiver speaks first (HELLO, repeated until data arrives). The sender keeps a window
of chunks in flight, bounded by what the receiver's socket buffer can hold and, below that,
paced and bounded by a congestion controller (core/congestion.py), and learns from
cumulative + selective ACKs what to resend (RACK, with an RFC 6298 timeout behind it). A
FIN carries the digest of the file (a SHA-256 hash list over its chunks' keyed hashes,
``core.transfer_digest``); the receiver answers DONE, with its own digest, only
when the digest of what it delivered matches. Every wait is bounded, so each side ends
Completed or Failed, and an ABORT tells the peer at once.

This module holds ``Sender``; ``Receiver`` is in ``core.transfer_receiver``, and what both share
(sizes, timing constants, states, events, their base class) in ``core.transfer_common``. All of
them are imported from here.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Any

from core import transfer_wire as wire
from core.congestion import Controller, SendState
from core.transfer_common import (
    ACK_DELAY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_WINDOW, ETHERNET_DATAGRAM_SIZE, GIVE_UP, INITIAL_RTO,
    LOOPBACK_DATAGRAM_SIZE, MAX_RTO, MAX_WINDOW_CHUNKS, MIN_DATAGRAM_SIZE, MIN_RTO, _ACK, _CLOCK_GRANULARITY,
    _DATA, _MAGIC, _MAX_CHUNKS, Completed, Data, Failed, Progress, ReceiverEvent, SenderEvent, State,
    _Endpoint, datagram_size_for, footprint,
)
from core.transfer_digest import EMPTY_PREFIX, chunk_term, hash_list
from core.transfer_receiver import Receiver
from core.transfer_wire import Kind, peek_transfer_id

__all__ = [
    "DEFAULT_WINDOW",
    "ETHERNET_DATAGRAM_SIZE",
    "GIVE_UP",
    "LOOPBACK_DATAGRAM_SIZE",
    "Completed",
    "Data",
    "Failed",
    "Progress",
    "Receiver",
    "ReceiverEvent",
    "Sender",
    "SenderEvent",
    "State",
    "datagram_size_for",
    "footprint",
    "peek_transfer_id",
]


class Sender(_Endpoint[SenderEvent]):
    """The presenter's side: streams ``size`` bytes fed by the shell to one receiver.

    Sends nothing until the receiver's HELLO arrives (then ``want_data()`` turns positive),
    and fails if none comes within ``give_up`` seconds. Afterwards it fails if the receiver
    acknowledges nothing new for ``give_up`` seconds while data or the FIN is outstanding.
    ``datagram_size`` is the whole DATA datagram (header included); use
    ``datagram_size_for(peer_ip)`` unless the user chose one. The receiver may lower it.

    A congestion controller (``core.congestion``) paces the data and bounds what is in
    flight below the receiver's window; ``want_data`` says what it lets go now and
    ``next_deadline`` includes ``next_send_time``, when it lets more go.
    ``congestion_control=False`` leaves only the receiver's window (for comparisons).
    """

    def __init__(
        self,
        transfer_id: bytes,
        size: int,
        now: float,
        *,
        datagram_size: int = ETHERNET_DATAGRAM_SIZE,
        give_up: float = GIVE_UP,
        min_rto: float = MIN_RTO,
        max_rto: float = MAX_RTO,
        key: bytes | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        congestion_control: bool = True,
    ) -> None:
        super().__init__(transfer_id, now, give_up, key)
        if size < 0:
            raise ValueError("size must not be negative")
        if not MIN_DATAGRAM_SIZE <= datagram_size <= wire.MAX_DATAGRAM:
            raise ValueError(f"datagram size must be {MIN_DATAGRAM_SIZE}..{wire.MAX_DATAGRAM}")
        self.size = size
        self.bytes_acked = 0
        self.resent = 0  # chunks sent again, for the curious
        self.resumed = 0  # bytes the receiver held already (verified by their SHA-256): not sent
        self._skip = 0  # bytes at the file's start to hash but not send (a resume)
        self._prefix_digest = b""  # the receiver's SHA-256 of those bytes
        self._prefix = hashlib.sha256()  # of the bytes skipped, to compare with the receiver's
        self._max_in_flight = max_in_flight
        self._datagram_size = datagram_size  # a whole DATA, tag included (the HELLO may lower it): the windows' unit
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._chunk = 0  # payload bytes per DATA datagram, fixed by the HELLO
        self._window = 0  # chunks allowed between the first unacknowledged and the next new one
        self._hash: Any = None  # the file's digest being computed (core.transfer_digest)
        self._fed = 0
        self._partial = b""  # fed bytes short of a whole chunk, waiting for the rest
        self._next = 0  # index of the next new chunk
        self._una = 0  # index of the first chunk not acknowledged cumulatively
        self._store: dict[int, bytes] = {}  # unacknowledged DATA datagrams, by chunk index
        self._sacked = 0  # bit i: chunk una + i is held by the receiver
        # When each chunk was last sent: a chunk's first sending is found by bisecting the
        # batches fed (first chunk index, time), a retransmission is recorded by itself.
        self._batch_first: list[int] = []
        self._batch_time: list[float] = []
        self._retransmitted: dict[int, float] = {}
        self._congestion_control = congestion_control
        self.controller: Controller | None = None  # made when the HELLO fixes the datagram size
        self._batch_state: list[SendState] = []  # with the controller: each batch's delivery state
        self._fin = b""  # the FIN, once every byte has been fed
        self._digest = b""  # of every byte fed, in the FIN; a DONE must echo it
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = INITIAL_RTO  # before backoff
        self._backoff = 1  # doubles at each timeout, back to 1 when an ACK brings news
        self._min_rtt = float("inf")
        self._rto_deadline: float | None = None
        # RACK (RFC 8985): the most recently sent chunk known to be delivered, as (time it was
        # sent, index), and the RTT it saw. A chunk sent before it and still missing is lost.
        self._rack: tuple[float, int] = (-1.0, -1)
        self._rack_rtt = 0.0
        self._loss_deadline: float | None = None

    # -- the shell's calls -------------------------------------------------------------

    def want_data(self) -> int:
        """How many more file bytes ``feed`` accepts now (0: window full, not started, or done)."""
        if self.state is not State.RUNNING:
            return 0
        if self._fed < self._skip:
            return self._skip - self._fed  # the part the receiver holds: hashed, not sent
        room = self._una + self._window - self._next
        if self.controller is not None and room > 0:
            room = min(room, self._paced_room(self.controller))
        if room <= 0:
            return 0
        return min(room * self._chunk - len(self._partial), self.size - self._fed)

    @property
    def held_bytes(self) -> int:
        """Bytes of DATA datagrams kept for resending (at most ``max_in_flight``)."""
        return len(self._store) * self._datagram_size

    def payload_within(self, held: int) -> int:
        """File bytes whose DATA datagrams take at most ``held`` bytes."""
        return max(0, held) // self._datagram_size * self._chunk

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Take the next ``len(data) <= want_data()`` bytes of the file and queue them as DATA.

        Whatever is kept is copied, so the shell may read the file into one buffer and
        reuse it. A piece short of a whole chunk waits for the next call (or the end).
        """
        view = memoryview(data).cast("B")
        length = len(view)
        if length > self.want_data():
            raise ValueError(f"fed {length} bytes, more than the {self.want_data()} wanted")
        if not length:
            return
        if self._fed < self._skip:
            self._prefix.update(view)
            self._fed += length
            self._skipped(now)
            return
        self._fed += length
        at_end = self._fed == self.size
        chunk = self._chunk
        pack = wire.DATA.pack
        magic = _MAGIC
        tid = self.transfer_id
        keyed = self._keyed
        term_of = chunk_term
        tag = self._tag
        add_digest = self._hash.update
        store = self._store
        out = self._out
        index = first = self._next
        pieces: list[bytes | memoryview] = []  # the chunks this call completes, in order
        start = 0
        if self._partial:  # complete the waiting piece with the head of this one
            start = min(chunk - len(self._partial), length)
            self._partial += view[:start]
            if len(self._partial) == chunk or at_end:
                pieces.append(self._partial)
                self._partial = b""
        end = length if at_end else start + (length - start) // chunk * chunk
        pieces += [view[offset : offset + chunk] for offset in range(start, end, chunk)]
        for piece in pieces:
            header = pack(magic, _DATA, tid, index, chunk)
            digest = term_of(keyed, header, piece)
            add_digest(digest)
            datagram = b"".join((header, piece, digest[:tag]))  # the tag: the digest's head (wire.Mac)
            store[index] = datagram
            out.append(datagram)
            index += 1
        if end < length:
            self._partial += view[end:]
        self._next = index
        if index > first:
            self._batch_first.append(first)
            self._batch_time.append(now)
            if self.controller is not None:
                size = (index - first) * self._datagram_size
                inflight = self._inflight() - size
                self._batch_state.append(self.controller.on_send(size, inflight, now, app_limited=at_end))
            self._arm(now)
        if at_end:
            self._send_fin(now)

    def _skipped(self, now: float) -> None:
        """Every byte fed so far is in the receiver's partial copy: once all of it is hashed,
        its SHA-256 must be the one the receiver reported, or the copy is of another file."""
        if self._fed < self._skip:
            return
        prefix_digest = self._prefix.digest()
        if prefix_digest != self._prefix_digest:
            self._fail("the receiver's partial copy is not of this file; it is discarded, send again",
                       now, tell_peer=True)
            return
        self._hash = hash_list(prefix_digest)
        self.resumed = self.bytes_acked = self._skip
        if self._fed == self.size:
            self._send_fin(now)

    def receive(self, datagram: bytes, now: float) -> None:
        """Handle one datagram from the receiver; anything malformed, foreign or forged is ignored."""
        accepted = self._accepted(datagram, now)
        if accepted is None:
            return
        datagram = accepted
        kind = datagram[1]
        if kind == _ACK:
            self._on_ack(datagram, now)
            if self.controller is not None:
                self.controller.advance(now)
        elif kind == Kind.HELLO:
            self._on_hello(datagram, now)
        elif kind == Kind.DONE:
            if self._fin and wire.decode_done(datagram) == self._digest:
                self.bytes_acked = self.size
                self._events.append(Progress(self.size, self.size))
                self._end(State.COMPLETED, Completed(), b"", now)
        elif kind == Kind.ABORT:
            self._fail(f"receiver aborted: {wire.decode_abort(datagram)}", now, tell_peer=False)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or None if no timer is running."""
        if self.state is State.SETUP:
            return self._last_heard + self._give_up
        if self.state is not State.RUNNING:
            return self._linger_deadline()
        paced = self.next_send_time()
        if self._rto_deadline is None:
            return paced
        deadline = min(self._rto_deadline, self._last_heard + self._give_up)
        if paced is not None:
            deadline = min(deadline, paced)
        return deadline if self._loss_deadline is None else min(deadline, self._loss_deadline)

    def next_send_time(self) -> float | None:
        """When the pacer next lets data go (a quantum, ``core.congestion``), if only the pacer
        holds data back (None: no controller, nothing left to feed, or a window is full)."""
        controller = self.controller
        if controller is None or self._fed == self.size or self.state is not State.RUNNING:
            return None
        if self._una + self._window <= self._next or self._inflight() + self._datagram_size > controller.cwnd:
            return None
        return controller.next_send_time()

    def on_timer(self, now: float) -> None:
        """Act on whatever deadline has passed; calling it early or twice is harmless."""
        if self.state is State.SETUP:
            if now >= self._last_heard + self._give_up:
                self._fail(f"the receiver did not answer within {self._give_up:g} s", now, tell_peer=True)
        elif self.state is not State.RUNNING:
            self._linger_timer(now)
        else:
            if self.controller is not None:
                self.controller.advance(now)  # the pacer's tokens accrue: want_data may grow
            if self._rto_deadline is None:
                return  # nothing outstanding
            if now >= self._last_heard + self._give_up:
                self._fail(f"no acknowledgement from the receiver for {self._give_up:g} s", now, tell_peer=True)
            else:
                if self._loss_deadline is not None and now >= self._loss_deadline:
                    self._detect_losses(now)
                if now >= self._rto_deadline:
                    self._on_rto(now)

    # -- protocol ------------------------------------------------------------------------

    def _on_hello(self, datagram: bytes, now: float) -> None:
        hello = wire.decode_hello(datagram)
        if hello is None or self.state is not State.SETUP:
            return  # a repeated HELLO (sent before our data reached the receiver) changes nothing
        window, max_datagram, resume, prefix_digest = hello
        if resume > self.size:
            self._fail(f"the receiver claims {resume} bytes of a {self.size}-byte file", now, tell_peer=True)
            return
        datagram_size = min(self._datagram_size, max_datagram)
        if datagram_size < MIN_DATAGRAM_SIZE:
            self._fail(f"the receiver accepts only {max_datagram}-byte datagrams", now, tell_peer=True)
            return
        self._chunk = datagram_size - wire.DATA_HEADER_SIZE - self._tag  # the tag is inside the size
        self._datagram_size = datagram_size
        if -(-self.size // self._chunk) > _MAX_CHUNKS:
            self._fail("the file is too large for this datagram size", now, tell_peer=True)
            return
        # The window counts chunks from the first unacknowledged one, so everything in flight
        # (and everything the receiver may have to buffer out of order) fits its socket buffer.
        # Never more than max_in_flight bytes kept for resending, whatever the receiver says.
        self._window = max(1, min(window // footprint(datagram_size), MAX_WINDOW_CHUNKS,
                                  self._max_in_flight // datagram_size))
        self._skip, self._prefix_digest = resume, prefix_digest
        if not resume:
            self._hash = hash_list(EMPTY_PREFIX)
        if self._congestion_control:
            seed = int.from_bytes(self.transfer_id[:4], "big")  # flows start their probing cycles apart
            self.controller = Controller(datagram_size, now, ack_delay=ACK_DELAY, seed=seed)
        self.state = State.RUNNING
        self._last_heard = now
        if self.size == 0:
            self._send_fin(now)

    def _send_fin(self, now: float) -> None:
        self._digest = self._hash.digest()
        self._fin = self._seal(wire.encode_fin(self.transfer_id, self.size, self._digest))
        self._out.append(self._fin)
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Start the retransmission timer if idle; the wait for the receiver starts now, not
        when the shell last had nothing to send."""
        if self._rto_deadline is None:
            self._rto_deadline = now + self._current_rto()
            self._last_heard = now

    def _on_ack(self, datagram: bytes, now: float) -> None:
        ack = wire.decode_ack(datagram)
        if ack is None or self.state is not State.RUNNING:
            return
        cumulative, trigger, sack = ack
        una = self._una
        if not una <= cumulative <= self._next:
            return  # an older ACK overtaken by a newer one, or nonsense
        if sack:
            # Relative to ``cumulative``; keep only bits for chunks actually sent.
            sack &= (1 << (self._next - cumulative)) - 1
            sack &= ~(self._sacked >> (cumulative - una))
        advanced = cumulative > una
        progressed = advanced or bool(sack)
        known_before = una + self._sacked.bit_count() if self.controller is not None else 0  # chunks delivered
        rtt = None
        # The chunk whose arrival prompted this ACK gives an RTT sample if this ACK is the
        # first news of it (a lost ACK would otherwise stretch the sample) and it was sent
        # only once (Karn's rule); with the newest chunk acknowledged, it also updates RACK.
        if una <= trigger < self._next:
            if trigger < cumulative:
                first_news = not (self._sacked >> (trigger - una)) & 1
            else:
                first_news = bool((sack >> (trigger - cumulative)) & 1)
            if first_news:
                if trigger not in self._retransmitted:
                    rtt = now - self._first_sent(trigger)
                    self._sample_rtt(rtt)
                self._delivered(trigger, now)
        sample = None
        if progressed:
            newest = cumulative + sack.bit_length() - 1 if sack else cumulative - 1
            self._delivered(newest, now)
            if self._batch_state and newest not in self._retransmitted:
                sample = self._batch_state[bisect_right(self._batch_first, newest) - 1]
        if advanced:
            store = self._store
            for index in range(una, cumulative):
                del store[index]
            if self._retransmitted:
                self._retransmitted = {k: t for k, t in self._retransmitted.items() if k >= cumulative}
            stale_batches = bisect_right(self._batch_first, cumulative) - 1
            if stale_batches > 0:
                del self._batch_first[:stale_batches], self._batch_time[:stale_batches]
                del self._batch_state[:stale_batches]
            self._sacked >>= cumulative - una
            self._una = una = cumulative
            self.bytes_acked = self._skip + min(cumulative * self._chunk, self.size - self._skip)
            self._events.append(Progress(self.bytes_acked, self.size))
        self._sacked |= sack
        if progressed:
            self._last_heard = now
            # As QUIC does (RFC 9002 6.2.1): news from the receiver ends the backoff. While
            # recovering, every chunk acknowledged is a resent one and gives no RTT sample
            # (Karn), so waiting for a sample would keep timeouts long through the recovery.
            self._backoff = 1
        if advanced:
            # RFC 6298 5.2-5.3: restart the timer when new data is acknowledged.
            outstanding = una < self._next or bool(self._fin)
            self._rto_deadline = now + self._current_rto() if outstanding else None
        if self.controller is not None and progressed:
            delivered = (cumulative + self._sacked.bit_count() - known_before) * self._datagram_size
            self.controller.on_ack(now, delivered, sample, rtt, self._inflight())
        self._detect_losses(now)

    def _inflight(self) -> int:
        """Bytes sent and not yet acknowledged (lost ones are resent at once, so they count)."""
        return (self._next - self._una - self._sacked.bit_count()) * self._datagram_size

    def _paced_room(self, controller: Controller) -> int:
        """How many more datagrams the controller lets go now: its window and its pacer."""
        return min(controller.allowance(), controller.cwnd - self._inflight()) // self._datagram_size

    def _delivered(self, index: int, now: float) -> None:
        """Let RACK know chunk ``index`` has just been acknowledged."""
        sent = self._retransmitted.get(index)
        if sent is None:
            sent = self._first_sent(index)
        elif now - sent < self._min_rtt:
            return  # too soon to be the resent copy: the original arrived (RFC 8985 6.2)
        if (sent, index) > self._rack:
            self._rack = (sent, index)
            self._rack_rtt = now - sent

    def _detect_losses(self, now: float) -> None:
        """Resend every chunk RACK (RFC 8985) finds lost; arm the timer for the rest.

        A missing chunk is lost once a chunk sent after it has been delivered and a
        reordering window (a quarter of the smallest RTT) has passed. It judges by time of
        sending, not by sequence: a resent chunk is judged by its latest copy, so a lost
        retransmission is found as soon as anything sent after it arrives, and an ACK that
        was overtaken by events (sent before a timeout) cannot make chunks sent since then
        look lost. Chunks not yet past the window set the loss timer.
        """
        self._loss_deadline = None
        rack = self._rack
        if rack[1] < self._una:
            return  # nothing delivered beyond the cumulative point, so nothing known lost
        deadline_after = self._rack_rtt + (self._min_rtt / 4 if self._srtt is not None else 0.0)
        una = self._una
        holes = ~self._sacked & ((1 << (self._next - una)) - 1)
        retransmitted = self._retransmitted
        pending: float | None = None
        while holes:
            lowest = holes & -holes
            holes ^= lowest
            index = una + lowest.bit_length() - 1
            sent = retransmitted.get(index)
            if sent is None:
                sent = self._first_sent(index)
                if (sent, index) >= rack:
                    break  # first sendings go in index order: every later one is newer still
            elif (sent, index) >= rack:
                continue
            due = sent + deadline_after
            if due <= now:
                self._retransmit(index, now)
            elif pending is None or due < pending:
                pending = due
        self._loss_deadline = pending

    def _first_sent(self, index: int) -> float:
        return self._batch_time[bisect_right(self._batch_first, index) - 1]

    def _retransmit(self, index: int, now: float) -> None:
        self.resent += 1
        self._out.append(self._store[index])
        if self.controller is not None:
            self.controller.on_resend(len(self._store[index]), now)
        self._retransmitted[index] = now
        if index == self._una:
            self._rto_deadline = now + self._current_rto()  # guard the oldest chunk's latest copy

    def _on_rto(self, now: float) -> None:
        """RFC 6298 5.4-5.6: resend the oldest unacknowledged chunk (or the FIN), back off."""
        if self._una < self._next:
            self._retransmit(self._una, now)
        elif self._fin:
            self._out.append(self._fin)
        if self._current_rto() < self._max_rto:
            self._backoff *= 2
        self._rto_deadline = now + self._current_rto()

    def _current_rto(self) -> float:
        return min(self._rto * self._backoff, self._max_rto)

    def _sample_rtt(self, rtt: float) -> None:
        """RFC 6298 2.2-2.4."""
        self._min_rtt = min(self._min_rtt, rtt)
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        rto = self._srtt + max(_CLOCK_GRANULARITY, 4 * self._rttvar)
        self._rto = min(self._max_rto, max(self._min_rto, rto))

    def _release(self) -> None:
        self._store.clear()
        self._retransmitted.clear()
        self._batch_first.clear()
        self._batch_time.clear()
        self._batch_state.clear()
        self._partial = b""
        self._rto_deadline = None
        self._loss_deadline = None
