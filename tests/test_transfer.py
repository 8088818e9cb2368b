"""The UDP transfer state machines, driven through a simulated channel on a fake clock."""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import transfer_wire as wire
from core.transfer import (
    ETHERNET_DATAGRAM_SIZE,
    LOOPBACK_DATAGRAM_SIZE,
    MAX_RTO,
    MIN_DATAGRAM_SIZE,
    Completed,
    Data,
    Failed,
    Progress,
    Receiver,
    Sender,
    State,
    datagram_size_for,
    footprint,
    peek_transfer_id,
)
from core.transfer_wire import Kind

TID = bytes(range(16))
OTHER_TID = bytes(range(1, 17))

Endpoint = Union[Sender, Receiver]
# A channel hook sees (datagram, rng, now) and returns the datagram to deliver, None to drop
# it, or a list of datagrams to deliver in its place (forgeries beside it, say).
Hook = Callable[[bytes, random.Random, float], Union[bytes, None, list[bytes]]]


@dataclass
class Link:
    """One direction of the channel: loses, duplicates and delays (hence reorders).

    Datagrams leave one after another at ``rate``; with a ``queue`` it is a bottleneck: a
    datagram that finds ``queue`` bytes or more waiting ahead of it is dropped.
    """

    loss: float = 0.0
    dup: float = 0.0
    delay: float = 0.001
    jitter: float = 0.0
    rate: float = 100e6  # bytes per second: datagrams leave one after another, not all at once
    hook: Hook | None = None
    queue: int | None = None  # bytes the queue holds; None: unbounded
    free_at: float = 0.0
    offered: int = 0  # datagrams that reached the queue
    overflowed: int = 0  # of those, dropped because it was full

    def depart(self, size: int, now: float) -> float | None:
        """When a datagram handed over now has left, or None if the full queue drops it."""
        self.offered += 1
        backlog = max(0.0, self.free_at - now) * self.rate
        if self.queue is not None and backlog + size > self.queue:
            self.overflowed += 1
            return None
        self.free_at = max(now, self.free_at) + size / self.rate
        return self.free_at


@dataclass
class Outcome:
    data: bytes
    sender_events: list[tuple[float, object]]
    receiver_events: list[tuple[float, object]]
    sender: Sender
    receiver: Receiver
    end: float
    max_in_flight: int
    max_held: int  # payload bytes the receiver buffered beyond a gap, at most
    last_arrival_at_sender: float
    last_arrival_at_receiver: float
    others: list[Outcome] = field(default_factory=list)  # the competitors' outcomes

    def final(self, events: list[tuple[float, object]]) -> object:
        finals = [e for _, e in events if isinstance(e, (Completed, Failed))]
        assert len(finals) == 1, finals
        return finals[0]

    def final_time(self, events: list[tuple[float, object]]) -> float:
        return next(t for t, e in events if isinstance(e, (Completed, Failed)))

    def received_between(self, start: float, end: float) -> int:
        """Bytes the receiver delivered in order from ``start`` to ``end``."""
        return sum(sum(map(len, e.chunks)) for t, e in self.receiver_events if start <= t < end and isinstance(e, Data))

    @property
    def sender_final(self) -> object:
        return self.final(self.sender_events)

    @property
    def receiver_final(self) -> object:
        return self.final(self.receiver_events)


@dataclass
class Simulation:
    content: bytes
    forward: Link = field(default_factory=Link)  # sender -> receiver
    backward: Link = field(default_factory=Link)  # receiver -> sender
    seed: int = 0
    read_size: int = 1 << 20
    sender_kwargs: dict[str, Any] = field(default_factory=dict)
    receiver_kwargs: dict[str, Any] = field(default_factory=dict)
    announced: int | None = None  # the size the server tells the receiver, if not the real one
    competitors: Sequence[float] = ()  # start times of more transfers of the same file over the same links

    def run(self, limit: float = 10_000.0) -> Outcome:
        """Run every transfer to its end; the first one's outcome, the others' in ``others``."""
        flows = [_Flow(self, TID, 0.0)] + [_Flow(self, bytes([i + 1]) * 16, t) for i, t in enumerate(self.competitors)]
        rng = random.Random(self.seed)
        in_flight: list[tuple[float, int, _Flow, bool, bytes]] = []  # (arrival, order, flow, to_sender, datagram)
        order = 0
        now = 0.0
        while not all(f.sender.closed and f.receiver.closed for f in flows):
            candidates = []
            for flow in flows:
                if now < flow.start:
                    candidates.append(flow.start)
                    continue
                flow.step(now)
                for endpoint, link, to_sender in ((flow.sender, self.forward, False), (flow.receiver, self.backward, True)):
                    for sent in endpoint.datagrams_to_send():
                        hooked = [sent] if link.hook is None else link.hook(sent, rng, now)
                        if not isinstance(hooked, list):  # a hook may also inject datagrams of its own
                            hooked = [] if hooked is None else [hooked]
                        for datagram in hooked:
                            if rng.random() < link.loss:
                                continue
                            departure = link.depart(len(datagram), now)
                            if departure is None:
                                continue
                            for _ in range(2 if rng.random() < link.dup else 1):
                                arrival = departure + link.delay + rng.random() * link.jitter
                                heapq.heappush(in_flight, (arrival, order, flow, to_sender, datagram))
                                order += 1
                flow.collect(now)
                candidates += [d for d in (flow.sender.next_deadline(), flow.receiver.next_deadline()) if d is not None]
            if in_flight:
                candidates.append(in_flight[0][0])
            if not candidates:
                break
            now = max(now, min(candidates))
            assert now <= limit, "the transfer did not end in bounded time"
            if in_flight and in_flight[0][0] <= now:
                _, _, flow, to_sender, datagram = heapq.heappop(in_flight)
                (flow.sender if to_sender else flow.receiver).receive(datagram, now)
                flow.last_arrival[to_sender] = now
            for flow in flows:
                for endpoint in (flow.sender, flow.receiver):
                    deadline = endpoint.next_deadline()
                    if deadline is not None and deadline <= now and now >= flow.start:
                        endpoint.on_timer(now)
        first, *others = [flow.outcome(now) for flow in flows]
        first.others = others
        return first


class _Flow:
    """One transfer of a simulation: its two sides and what was seen of it."""

    def __init__(self, simulation: Simulation, transfer_id: bytes, start: float) -> None:
        self.content = simulation.content
        self.read_size = simulation.read_size
        self.start = start
        self.sender = Sender(transfer_id, len(self.content), start, **simulation.sender_kwargs)
        size = len(self.content) if simulation.announced is None else simulation.announced
        self.receiver = Receiver(transfer_id, size, start, **simulation.receiver_kwargs)
        self.fed = 0
        self.received = bytearray()
        self.sender_events: list[tuple[float, object]] = []
        self.receiver_events: list[tuple[float, object]] = []
        self.max_in_flight = self.max_held = 0
        self.last_arrival = {True: 0.0, False: 0.0}  # keyed by "to the sender"

    def step(self, now: float) -> None:
        sender, receiver = self.sender, self.receiver
        while n := sender.want_data():
            piece = self.content[self.fed : self.fed + min(n, self.read_size)]
            sender.feed(piece, now)
            self.fed += len(piece)
        self.max_in_flight = max(self.max_in_flight, sender._next - sender._una)
        self.max_held = max(self.max_held, len(receiver._held) * receiver._chunk)

    def collect(self, now: float) -> None:
        self.sender_events += [(now, e) for e in self.sender.events()]
        for received_event in self.receiver.events():
            if isinstance(received_event, Data):
                self.received += b"".join(received_event.chunks)
            self.receiver_events.append((now, received_event))

    def outcome(self, now: float) -> Outcome:
        return Outcome(bytes(self.received), self.sender_events, self.receiver_events, self.sender, self.receiver, now,
                       self.max_in_flight, self.max_held, self.last_arrival[True], self.last_arrival[False])


def content_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_consistent(outcome: Outcome, content: bytes) -> None:
    """Never a silent difference: a Completed receiver holds exactly the file, and a
    Completed sender implies a Completed receiver. The one split allowed is a receiver that
    verified the file while every DONE it sent was lost: the sender then says Failed."""
    sender_final, receiver_final = outcome.sender_final, outcome.receiver_final
    if isinstance(receiver_final, Completed):
        assert outcome.data == content
    if isinstance(sender_final, Completed):
        assert isinstance(receiver_final, Completed)


# -- the wire format ------------------------------------------------------------------


def test_each_kind_round_trips() -> None:
    assert wire.decode_hello(wire.encode_hello(TID, 123_456, 1_472)) == (123_456, 1_472, 0, bytes(32))
    assert wire.decode_hello(wire.encode_hello(TID, 1, 2, 2**40, b"d" * 32)) == (1, 2, 2**40, b"d" * 32)
    assert wire.decode_ack(wire.encode_ack(TID, 7, 9, 0b1010_0000)) == (7, 9, 0b1010_0000)
    assert wire.decode_ack(wire.encode_ack(TID, 7, wire.NO_CHUNK, 0)) == (7, wire.NO_CHUNK, 0)
    digest = hashlib.sha256(b"x").digest()
    assert wire.decode_fin(wire.encode_fin(TID, 2**40, digest)) == (2**40, digest)
    assert wire.decode_abort(wire.encode_abort(TID, "disk full")) == "disk full"
    assert wire.decode_done(wire.encode_done(TID, digest)) == digest
    assert wire.decode_done(wire.encode_done(TID, digest)[:-1]) is None
    for datagram in (
        wire.encode_hello(TID, 1, 2),
        wire.encode_ack(TID, 0, 0, 0),
        wire.encode_fin(TID, 0, digest),
        wire.encode_done(TID, digest),
        wire.encode_abort(TID, ""),
        wire.DATA.pack(wire.MAGIC, Kind.DATA, TID, 0, 1) + b"x",
    ):
        assert peek_transfer_id(datagram) == TID


def test_abort_reason_is_made_printable_and_short() -> None:
    reason = wire.decode_abort(wire.encode_abort(TID, "bad\x1b[2J\nthing" + "x" * 500))
    assert reason.startswith("bad[2Jthing")
    assert reason.isprintable() and len(reason) <= wire.MAX_REASON_BYTES
    assert wire.decode_abort(wire.COMMON.pack(wire.MAGIC, Kind.ABORT, TID) + b"\xff\xfe\x07") == "\ufffd\ufffd"


@given(st.binary(max_size=100))
def test_peek_never_raises(datagram: bytes) -> None:
    tid = peek_transfer_id(datagram)
    assert tid is None or (len(tid) == 16 and tid == datagram[2:18])


def test_peek_rejects_foreign_and_short_datagrams() -> None:
    assert peek_transfer_id(b"") is None
    assert peek_transfer_id(wire.encode_done(TID, bytes(32))[:17]) is None
    assert peek_transfer_id(b"\x00" + wire.encode_done(TID, bytes(32))[1:]) is None
    assert peek_transfer_id(bytes([wire.MAGIC, 0]) + TID) is None
    assert peek_transfer_id(bytes([wire.MAGIC, 7]) + TID) is None


def test_datagram_size_depends_on_the_path() -> None:
    assert datagram_size_for("127.0.0.1") == LOOPBACK_DATAGRAM_SIZE == 65_507
    assert datagram_size_for("::1") == LOOPBACK_DATAGRAM_SIZE
    assert datagram_size_for("192.168.1.20") == ETHERNET_DATAGRAM_SIZE == 1_472
    assert datagram_size_for("not an address") == ETHERNET_DATAGRAM_SIZE


@pytest.mark.parametrize(
    ("size", "measured"),
    [(200, 1_280), (700, 2_305), (1_400, 2_305), (1_472, 2_305), (3_700, 4_360), (7_900, 16_644),
     (16_000, 16_644), (16_384, 17_332), (65_507, 67_650)],
)
def test_footprint_bounds_what_linux_charges(size: int, measured: int) -> None:
    assert measured <= footprint(size) <= 2 * measured


# -- transfers through the simulated channel -------------------------------------------


def test_clean_transfer_completes() -> None:
    content = content_of(300_000, 1)
    outcome = Simulation(content).run()
    assert isinstance(outcome.sender_final, Completed)
    assert isinstance(outcome.receiver_final, Completed)
    assert outcome.data == content
    progress = [e for _, e in outcome.sender_events if isinstance(e, Progress)]
    assert [p.acked for p in progress] == sorted(p.acked for p in progress)
    assert progress[-1] == Progress(len(content), len(content))
    assert outcome.sender.bytes_acked == outcome.receiver.bytes_received == len(content)
    assert outcome.sender.closed and outcome.receiver.closed


def test_zero_byte_file() -> None:
    outcome = Simulation(b"").run()
    assert isinstance(outcome.sender_final, Completed)
    assert isinstance(outcome.receiver_final, Completed)
    assert outcome.data == b""


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.integers(0, 3_000), st.integers(0, 120_000)),
    datagram_size=st.integers(MIN_DATAGRAM_SIZE, 3_000),
    window=st.integers(1_000, 200_000),
    loss=st.floats(0.0, 0.25),
    back_loss=st.floats(0.0, 0.25),
    dup=st.floats(0.0, 0.2),
    jitter=st.floats(0.0, 0.02),
    read_size=st.integers(1, 50_000),
    seed=st.integers(0, 2**32),
)
def test_lossy_channel_delivers_the_file(
    size: int, datagram_size: int, window: int, loss: float, back_loss: float, dup: float,
    jitter: float, read_size: int, seed: int,
) -> None:
    content = content_of(size, seed)
    outcome = Simulation(
        content,
        forward=Link(loss=loss, dup=dup, jitter=jitter),
        backward=Link(loss=back_loss, dup=dup, jitter=jitter),
        seed=seed,
        read_size=read_size,
        # A long give-up time makes an unlucky run of losses all but impossible to fail.
        sender_kwargs={"datagram_size": datagram_size, "give_up": 120.0},
        receiver_kwargs={"window": window, "give_up": 120.0},
    ).run()
    assert isinstance(outcome.receiver_final, Completed)
    assert isinstance(outcome.sender_final, Completed)
    assert outcome.data == content
    assert outcome.max_in_flight <= outcome.sender._window
    assert outcome.max_held <= window


@settings(deadline=None, max_examples=150)
@given(
    size=st.integers(0, 20_000),
    loss=st.floats(0.0, 1.0),
    back_loss=st.floats(0.0, 1.0),
    dup=st.floats(0.0, 0.5),
    jitter=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_outcomes_never_silently_differ(
    size: int, loss: float, back_loss: float, dup: float, jitter: float, seed: int
) -> None:
    content = content_of(size, seed)
    outcome = Simulation(
        content,
        forward=Link(loss=loss, dup=dup, jitter=jitter),
        backward=Link(loss=back_loss, dup=dup, jitter=jitter),
        seed=seed,
        sender_kwargs={"datagram_size": 1_000},
    ).run()
    assert_consistent(outcome, content)
    if loss == 1.0 or back_loss == 1.0:
        assert isinstance(outcome.sender_final, Failed)
    # Bounded: each side gives up after 10 s without progress, and there are few chunks.
    bound = (len(content) // 974 + 3) * 2 * 10.0
    assert outcome.final_time(outcome.sender_events) <= bound
    assert outcome.final_time(outcome.receiver_events) <= bound


def test_heavy_reordering_and_duplication_still_deliver() -> None:
    content = content_of(200_000, 4)
    link = Link(dup=0.3, jitter=0.05, rate=1e6)  # 50 ms of jitter against 1.4 ms per datagram
    outcome = Simulation(content, forward=link, backward=Link(dup=0.3, jitter=0.05), seed=4).run()
    assert isinstance(outcome.receiver_final, Completed)
    assert isinstance(outcome.sender_final, Completed)
    assert outcome.data == content


def test_a_lost_done_is_answered_again() -> None:
    """The receiver lingers after Completed and answers the sender's FIN again."""
    dropped: list[bytes] = []

    def drop_first_done(datagram: bytes, rng: random.Random, now: float) -> bytes | None:
        if datagram[1] == Kind.DONE and not dropped:
            dropped.append(datagram)
            return None
        return datagram

    content = content_of(10_000, 5)
    outcome = Simulation(content, backward=Link(hook=drop_first_done)).run()
    assert dropped
    assert isinstance(outcome.sender_final, Completed)
    assert isinstance(outcome.receiver_final, Completed)
    assert outcome.data == content


# -- bounded time: a side that vanishes -------------------------------------------------


def run_alone(endpoint: Endpoint, until: float) -> list[tuple[float, list[Any], Sequence[bytes]]]:
    """Drive one side with nobody answering: (time, events, datagrams) at each deadline."""
    trace: list[tuple[float, list[Any], Sequence[bytes]]] = []
    now = 0.0
    trace.append((now, endpoint.events(), endpoint.datagrams_to_send()))
    while (deadline := endpoint.next_deadline()) is not None and deadline <= until:
        now = deadline
        endpoint.on_timer(now)
        trace.append((now, endpoint.events(), endpoint.datagrams_to_send()))
    return trace


def test_sender_gives_up_when_no_hello_comes() -> None:
    sender = Sender(TID, 1_000, 0.0, give_up=10.0)
    assert sender.want_data() == 0 and not sender.datagrams_to_send()
    trace = run_alone(sender, until=100.0)
    (failed_at, events, datagrams) = next(step for step in trace if step[1])
    assert failed_at == pytest.approx(10.0)
    assert events == [Failed("the receiver did not answer within 10 s")]
    assert [d[1] for d in datagrams] == [Kind.ABORT]
    assert all(not d for _, _, d in trace[:-2])  # nothing at all was sent before giving up
    assert sender.closed and trace[-1][0] == pytest.approx(20.0)


def test_receiver_repeats_hello_then_gives_up() -> None:
    receiver = Receiver(TID, 1_000, 0.0, give_up=10.0)
    trace = run_alone(receiver, until=100.0)
    hellos = [t for t, _, datagrams in trace for d in datagrams if d[1] == Kind.HELLO]
    assert hellos[0] == 0.0 and len(hellos) >= 10
    gaps = [b - a for a, b in zip(hellos, hellos[1:])]
    assert all(b >= a - 1e-9 for a, b in zip(gaps, gaps[1:]))  # backs off...
    assert max(gaps) <= MAX_RTO + 1e-9  # ...but keeps asking
    failed = [(t, e) for t, events, _ in trace for e in events]
    assert failed == [(pytest.approx(10.0), Failed("the sender did not start for 10 s"))]
    assert receiver.state is State.FAILED and receiver.closed


@pytest.mark.parametrize("vanish_after", [0.0, 0.001, 0.003])
def test_sender_gives_up_when_the_receiver_vanishes(vanish_after: float) -> None:
    """Everything from the receiver is lost after ``vanish_after`` s (it logged out)."""
    gone = Link(hook=lambda d, rng, now: d if now < vanish_after else None)
    content = content_of(500_000, 6)
    outcome = Simulation(content, backward=gone, sender_kwargs={"give_up": 10.0},
                         receiver_kwargs={"give_up": 10.0}).run()
    assert isinstance(outcome.sender_final, Failed)
    assert outcome.final_time(outcome.sender_events) <= outcome.last_arrival_at_sender + 10.0 + 1e-9
    assert_consistent(outcome, content)


@pytest.mark.parametrize("last", [0, 1, 100])
def test_receiver_gives_up_when_the_sender_vanishes(last: int) -> None:
    """Nothing from the sender gets through after its first ``last`` datagrams."""
    passed: list[bytes] = []

    def gone(datagram: bytes, rng: random.Random, now: float) -> bytes | None:
        if len(passed) < last:
            passed.append(datagram)
            return datagram
        return None

    content = content_of(500_000, 7)
    outcome = Simulation(content, forward=Link(hook=gone)).run()
    assert isinstance(outcome.receiver_final, Failed)
    assert isinstance(outcome.sender_final, Failed)
    assert outcome.final_time(outcome.receiver_events) == pytest.approx(outcome.last_arrival_at_receiver + 10.0)
    assert outcome.data != content


def test_abort_is_reported_promptly_on_the_other_side() -> None:
    sender = Sender(TID, 100_000, 0.0)
    receiver = Receiver(TID, 100_000, 0.0)
    for d in receiver.datagrams_to_send():
        sender.receive(d, 0.0)
    sender.feed(b"x" * 10_000, 0.0)
    for d in sender.datagrams_to_send():
        receiver.receive(d, 0.001)
    receiver.abort("disk full\x1b[31m", 0.002)
    assert receiver.events()[-1] == Failed("disk full[31m")
    for d in receiver.datagrams_to_send():
        sender.receive(d, 0.003)
    assert sender.events()[-1] == Failed("receiver aborted: disk full[31m")
    assert sender.state is State.FAILED and sender.want_data() == 0
    sender.abort("again", 0.004)  # a finished transfer ignores it
    assert sender.events() == [] and not sender.datagrams_to_send()


def test_a_failed_side_answers_the_peer_with_abort_while_lingering() -> None:
    sender = Sender(TID, 100_000, 0.0)
    receiver = Receiver(TID, 100_000, 0.0)
    for d in receiver.datagrams_to_send():
        sender.receive(d, 0.0)
    receiver.abort("user left", 0.001)
    receiver.datagrams_to_send()  # this ABORT is lost
    sender.feed(b"x" * 10_000, 0.002)
    for d in sender.datagrams_to_send():
        receiver.receive(d, 0.003)
    answers = receiver.datagrams_to_send()
    assert len(answers) == 1 and answers[0][1] == Kind.ABORT  # rate-limited: one answer
    sender.receive(answers[0], 0.004)
    assert sender.events()[-1] == Failed("receiver aborted: user left")


# -- garbage, forgeries, size caps, corruption ------------------------------------------


def started(size: int, **receiver_kwargs: object) -> tuple[Sender, Receiver]:
    """A sender and receiver past the handshake, nothing sent yet; the sender has no
    congestion controller, so its window and timers alone decide (test_congestion.py
    tests the controller)."""
    sender = Sender(TID, size, 0.0, datagram_size=1_000, congestion_control=False)
    receiver = Receiver(TID, size, 0.0, **receiver_kwargs)  # type: ignore[arg-type]
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.0)
    return sender, receiver


def snapshot(endpoint: Endpoint) -> tuple[object, ...]:
    return (endpoint.state, endpoint.events(), endpoint.datagrams_to_send(), endpoint.next_deadline())


foreign = st.one_of(
    st.binary(max_size=200),  # anything at all
    st.binary(max_size=200).map(lambda b: wire.MAGIC.to_bytes(1, "big") + b),
    st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=100)).map(  # another transfer's
        lambda kb: bytes([wire.MAGIC, kb[0]]) + OTHER_TID + kb[1]
    ),
    st.tuples(st.sampled_from(list(Kind)), st.integers(0, 17)).map(  # cut inside the header
        lambda kn: (bytes([wire.MAGIC, kn[0]]) + TID)[: kn[1]]
    ),
)


@settings(deadline=None, max_examples=200)
@given(garbage=st.lists(foreign, max_size=5))
def test_foreign_and_truncated_datagrams_change_nothing(garbage: list[bytes]) -> None:
    sender, receiver = started(5_000)
    sender.feed(b"a" * 3_000, 0.0)
    for datagram in sender.datagrams_to_send()[:2]:
        receiver.receive(datagram, 0.0)
    receiver.events()
    before = snapshot(sender), snapshot(receiver)
    for datagram in garbage:
        sender.receive(datagram, 0.001)
        receiver.receive(datagram, 0.001)
    assert (snapshot(sender), snapshot(receiver)) == before


@settings(deadline=None, max_examples=300)
@given(kind=st.sampled_from(list(Kind)), body=st.binary(max_size=60), target=st.sampled_from(["sender", "receiver"]))
def test_forgeries_with_the_right_id_fail_cleanly_or_change_nothing(kind: Kind, body: bytes, target: str) -> None:
    """Whoever knows the id is the peer; still, nonsense from it never raises, never makes a
    receiver report a file it does not have, and at worst fails the transfer."""
    sender, receiver = started(5_000)
    sender.feed(b"a" * 5_000, 0.0)
    for datagram in sender.datagrams_to_send()[:2]:
        receiver.receive(datagram, 0.0)
    receiver.datagrams_to_send()
    endpoint: Endpoint = sender if target == "sender" else receiver
    endpoint.receive(bytes([wire.MAGIC, kind]) + TID + body, 0.001)
    assert endpoint.state in (State.RUNNING, State.FAILED)
    if endpoint.state is State.FAILED:
        assert isinstance(endpoint.events()[-1], Failed)


def test_garbage_in_the_channel_does_not_disturb_a_transfer() -> None:
    def with_garbage(datagram: bytes, rng: random.Random, now: float) -> bytes:
        return datagram if rng.random() < 0.7 else rng.choice([
            rng.randbytes(rng.randrange(60)),
            bytes([wire.MAGIC, rng.randrange(1, 7)]) + OTHER_TID + rng.randbytes(40),
            datagram[: rng.randrange(18)],
        ])

    content = content_of(100_000, 8)
    outcome = Simulation(content, forward=Link(hook=with_garbage), backward=Link(hook=with_garbage), seed=8).run()
    assert isinstance(outcome.receiver_final, Completed)
    assert isinstance(outcome.sender_final, Completed)
    assert outcome.data == content


def test_data_beyond_the_announced_size_fails_the_receiver() -> None:
    sender, receiver = started(5_000)
    chunk = sender._chunk
    beyond = wire.DATA.pack(wire.MAGIC, Kind.DATA, TID, 5_000 // chunk + 1, chunk) + b"x" * chunk
    receiver.receive(beyond, 0.001)
    assert receiver.events() == [Failed("data beyond the announced size")]
    assert [d[1] for d in receiver.datagrams_to_send()] == [Kind.ABORT]


def test_an_overlong_last_chunk_fails_the_receiver() -> None:
    sender, receiver = started(1_500)
    chunk = sender._chunk
    last = wire.DATA.pack(wire.MAGIC, Kind.DATA, TID, 1, chunk) + b"x" * (1_500 - chunk + 1)
    receiver.receive(last, 0.001)
    assert receiver.events() == [Failed("data beyond the announced size")]


_CHUNK = 1_000 - wire.DATA_HEADER_SIZE


@settings(deadline=None, max_examples=300)
@given(
    size=st.integers(1, 5_000) | st.integers(1, 5).map(lambda n: n * _CHUNK),  # also exact multiples
    index=st.integers(0, 8),
    length=st.integers(1, 1_100) | st.sampled_from([_CHUNK - 1, _CHUNK, _CHUNK + 1]),
)
def test_a_data_is_taken_ignored_or_fatal_by_its_length_alone(size: int, index: int, length: int) -> None:
    """The rule, stated once: chunk ``index`` must be exactly ``min(chunk, size - index *
    chunk)`` bytes. Shorter is a truncated datagram (ignored, the sender resends); longer, or
    any chunk past the end, is data beyond the announced size (the transfer fails)."""
    chunk = _CHUNK
    receiver = Receiver(TID, size, 0.0)
    receiver.datagrams_to_send()
    first = wire.DATA.pack(wire.MAGIC, Kind.DATA, TID, 0, chunk) + b"a" * min(chunk, size)
    receiver.receive(first, 0.0)  # fixes the chunk size
    receiver.events()
    expected = min(chunk, size - index * chunk)
    receiver.receive(wire.DATA.pack(wire.MAGIC, Kind.DATA, TID, index, chunk) + b"b" * length, 0.001)
    if expected <= 0 or length > expected:
        assert receiver.events() == [Failed("data beyond the announced size")]
    elif length < expected:
        assert receiver.state is State.RUNNING and receiver.events() == []
        assert receiver._trigger == 0  # ignored: not even counted as heard from
    else:
        assert receiver.state is State.RUNNING  # no FIN yet
        assert not any(isinstance(e, Failed) for e in receiver.events())
        assert receiver._trigger == index
        if index == 1:
            assert receiver.bytes_received == min(size, 2 * chunk)  # delivered in order
        elif index > 1:
            assert index in receiver._held  # beyond a gap


def test_a_sender_with_more_than_announced_is_refused() -> None:
    """The server announced 5,000 bytes; the presenter's client streams 50,000."""
    content = content_of(50_000, 9)
    outcome = Simulation(content, announced=5_000).run()
    assert outcome.receiver_final == Failed("data beyond the announced size")
    assert outcome.sender_final == Failed("receiver aborted: data beyond the announced size")
    assert len(outcome.data) <= 5_000


def test_a_sender_with_less_than_announced_is_refused() -> None:
    content = content_of(4_000, 10)
    outcome = Simulation(content, announced=5_000).run()
    assert isinstance(outcome.receiver_final, Failed)
    assert isinstance(outcome.sender_final, Failed)


def test_an_announced_size_over_the_limit_is_refused_at_once() -> None:
    receiver = Receiver(TID, 10_000, 0.0, max_size=9_999)
    assert receiver.events() == [Failed("the file (10000 bytes) exceeds the limit of 9999 bytes")]
    assert [d[1] for d in receiver.datagrams_to_send()] == [Kind.ABORT]  # no HELLO
    assert Receiver(TID, 10_000, 0.0, max_size=10_000).state is State.SETUP


def test_feeding_more_than_wanted_is_a_programming_error() -> None:
    sender = Sender(TID, 1_000, 0.0)
    with pytest.raises(ValueError):
        sender.feed(b"x", 0.0)  # no HELLO yet
    sender, _ = started(1_000)
    with pytest.raises(ValueError):
        sender.feed(b"x" * 1_001, 0.0)


@settings(deadline=None, max_examples=40)
@given(size=st.integers(1, 60_000), position=st.floats(0.0, 1.0), bit=st.integers(0, 7), seed=st.integers(0, 2**32))
def test_a_flipped_bit_in_the_data_is_caught_by_the_digest(size: int, position: float, bit: int, seed: int) -> None:
    target = int(position * (size - 1))
    flipped: list[int] = []

    def corrupt(datagram: bytes, rng: random.Random, now: float) -> bytes:
        if datagram[1] != Kind.DATA or flipped:
            return datagram
        index, chunk = wire.DATA_FIELDS.unpack_from(datagram, 18)
        offset = target - index * chunk
        if not 0 <= offset < len(datagram) - wire.DATA_HEADER_SIZE:
            return datagram
        flipped.append(target)
        damaged = bytearray(datagram)
        damaged[wire.DATA_HEADER_SIZE + offset] ^= 1 << bit
        return bytes(damaged)

    content = content_of(size, seed)
    outcome = Simulation(content, forward=Link(hook=corrupt), seed=seed).run()
    assert flipped
    assert outcome.receiver_final == Failed("SHA-256 mismatch: the data received differs from the file sent")
    assert isinstance(outcome.sender_final, Failed)


# -- timers, RTT and the ACK policy -------------------------------------------------------


def test_rtt_estimate_follows_rfc_6298_and_karn() -> None:
    sender, receiver = started(100_000)
    assert sender._current_rto() == pytest.approx(0.2)  # before any sample
    sender.feed(b"x" * sender._chunk * 4, 0.0)
    for datagram in sender.datagrams_to_send():
        receiver.receive(datagram, 0.05)
    receiver.on_timer(0.1)  # the delayed ACK names the last chunk that arrived
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.1)
    assert sender._srtt == pytest.approx(0.1) and sender._rttvar == pytest.approx(0.05)
    assert sender._current_rto() == pytest.approx(0.1 + 4 * 0.05)
    # A timeout: the oldest chunk is resent and the timeout doubles.
    sender.feed(b"x" * sender._chunk, 1.0)
    lost = sender.datagrams_to_send()
    deadline = sender.next_deadline()
    assert deadline is not None and deadline == pytest.approx(1.3)
    sender.on_timer(deadline)
    assert sender.datagrams_to_send() == lost and sender.resent == 1
    assert sender.next_deadline() == pytest.approx(1.3 + 0.6)
    # The ACK for the resent chunk ends the backoff but gives no RTT sample (Karn).
    receiver.receive(lost[0], 1.35)
    receiver.on_timer(1.4)
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 1.4)
    assert sender._srtt == pytest.approx(0.1)
    assert sender._current_rto() == pytest.approx(0.3)


def test_rto_never_below_the_minimum_nor_above_the_maximum() -> None:
    sender, receiver = started(100_000)
    sender.feed(b"x" * sender._chunk, 0.0)
    for datagram in sender.datagrams_to_send():
        receiver.receive(datagram, 0.0)
    receiver.on_timer(0.005)
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.005)
    assert sender._srtt == pytest.approx(0.005)
    assert sender._current_rto() == pytest.approx(0.03)  # 0.005 + 4 * 0.0025, raised to the floor
    sender.feed(b"x" * sender._chunk, 1.0)
    for _ in range(12):
        deadline = sender.next_deadline()
        assert deadline is not None
        sender.on_timer(deadline)
    assert sender._current_rto() == pytest.approx(MAX_RTO)
    assert sender.state is State.RUNNING  # 12 timeouts but under the 10 s give-up time


def test_receiver_acks_at_once_on_a_gap_a_duplicate_and_a_filled_gap() -> None:
    sender, receiver = started(100_000)
    sender.feed(b"x" * sender._chunk * 6, 0.0)
    chunks = sender.datagrams_to_send()

    def acks() -> list[tuple[int, int, int]]:
        return [wire.decode_ack(d) for d in receiver.datagrams_to_send() if d[1] == Kind.ACK]  # type: ignore[misc]

    receiver.receive(chunks[0], 0.0)
    assert acks() == []  # in order: wait for more, or for the delayed-ACK timer
    assert receiver.next_deadline() == pytest.approx(0.005)
    receiver.receive(chunks[2], 0.0)
    assert acks() == [(1, 2, 0b10)]  # a gap: chunk 1 missing, chunk 2 held
    receiver.receive(chunks[3], 0.0)
    assert acks() == []  # extends the block beyond the gap: no news
    receiver.receive(chunks[3], 0.0)
    assert acks() == [(1, 3, 0b110)]  # a duplicate
    receiver.receive(chunks[1], 0.0)
    assert acks() == [(4, 1, 0)]  # the gap filled
    receiver.receive(chunks[4], 0.0)
    receiver.on_timer(0.005)
    assert acks() == [(5, 4, 0)]  # the delayed ACK


def test_receiver_acks_at_least_every_quarter_window() -> None:
    window = 100 * footprint(1_000)
    sender, receiver = started(1_000_000, window=window)
    assert sender._window == 100
    sender.feed(b"x" * sender._chunk * 100, 0.0)
    cumulative = []
    for datagram in sender.datagrams_to_send():
        receiver.receive(datagram, 0.0)
        cumulative += [wire.decode_ack(d)[0] for d in receiver.datagrams_to_send()]  # type: ignore[index]
    assert cumulative == [25, 50, 75, 100]


def test_sender_keeps_within_the_window_and_resumes_on_ack() -> None:
    sender, receiver = started(1_000_000, window=10 * footprint(1_000))
    wanted = sender.want_data()
    assert wanted == 10 * sender._chunk
    sender.feed(b"x" * wanted, 0.0)
    assert sender.want_data() == 0
    for datagram in sender.datagrams_to_send():
        receiver.receive(datagram, 0.0)
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.001)
    assert sender.want_data() == 10 * sender._chunk
    assert sender.events()[-1] == Progress(10 * sender._chunk, 1_000_000)


def test_closed_only_after_lingering() -> None:
    sender = Sender(TID, 0, 0.0)
    for datagram in Receiver(TID, 0, 0.0).datagrams_to_send():
        sender.receive(datagram, 0.0)
    assert not sender.closed
    outcome = Simulation(content_of(1_000, 11)).run()
    receiver_done = outcome.final_time(outcome.receiver_events)
    assert outcome.receiver.closed and outcome.end >= receiver_done + 10.0
    assert outcome.sender.closed  # at once: a completed sender has nothing left to say
    assert outcome.receiver.next_deadline() is None and outcome.sender.next_deadline() is None
