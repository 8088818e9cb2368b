"""Authenticated transfers (issue 11): a forging channel never changes a keyed transfer's
outcome nor ends it; a hostile window advert cannot pin the sender's memory."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from core import transfer_wire as wire
from core.transfer import Completed, Failed, Receiver, Sender, State
from core.transfer_wire import Kind
from tests.test_transfer import TID, Link, Simulation, content_of, snapshot

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def record_other_transfer(size: int, seed: int) -> list[bytes]:
    """Every datagram of a whole transfer with the same id under another key, both ways."""
    seen: list[bytes] = []

    def tap(datagram: bytes, rng: random.Random, now: float) -> bytes:
        seen.append(datagram)
        return datagram

    keyed = {"key": OTHER_KEY}
    outcome = Simulation(content_of(size, seed + 1), forward=Link(hook=tap), backward=Link(hook=tap), seed=seed,
                         sender_kwargs={**keyed, "datagram_size": 1_000}, receiver_kwargs=keyed).run()
    assert isinstance(outcome.receiver_final, Completed)
    return seen


def forgery(kind: int, body: bytes, tag: bytes) -> bytes:
    return bytes([wire.MAGIC, kind]) + TID + body + tag


@settings(deadline=None, max_examples=60)
@given(
    size=st.integers(0, 30_000),
    seed=st.integers(0, 2**32),
    rate=st.floats(0.0, 3.0),
    loss=st.sampled_from([0.0, 0.1]),
)
def test_a_forging_channel_never_changes_the_outcome_nor_ends_the_transfer(
    size: int, seed: int, rate: float, loss: float
) -> None:
    """Beside every real datagram the channel injects (on average ``rate``) forgeries: random
    bytes, datagrams of every kind with the right id and a wrong tag (ABORTs among them),
    and replays of a whole other transfer with the same id under another key."""
    replays = record_other_transfer(3_000, seed)

    def forge(datagram: bytes, rng: random.Random, now: float) -> list[bytes]:
        out = [datagram]
        for _ in range(int(rate) + (rng.random() < rate % 1)):
            choice = rng.randrange(4)
            if choice == 0:
                out.append(rng.randbytes(rng.randrange(120)))
            elif choice == 1:
                out.append(forgery(rng.randrange(1, 7), rng.randbytes(rng.randrange(80)), rng.randbytes(16)))
            elif choice == 2:  # a real datagram with its tag broken, or its body altered
                flipped = bytearray(datagram)
                flipped[rng.randrange(18, len(flipped))] ^= 1 << rng.randrange(8)
                out.append(bytes(flipped))
            else:
                out.append(rng.choice(replays))
        rng.shuffle(out)
        return out

    content = content_of(size, seed)
    keyed = {"key": KEY}
    outcome = Simulation(content, forward=Link(hook=forge, loss=loss), backward=Link(hook=forge, loss=loss),
                         seed=seed, sender_kwargs={**keyed, "datagram_size": 1_000}, receiver_kwargs=keyed).run()
    assert isinstance(outcome.sender_final, Completed)
    assert isinstance(outcome.receiver_final, Completed)
    assert outcome.data == content


def started_keyed(size: int) -> tuple[Sender, Receiver]:
    sender = Sender(TID, size, 0.0, datagram_size=1_000, key=KEY)
    receiver = Receiver(TID, size, 0.0, key=KEY)
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.0)
    sender.feed(b"a" * 3_000, 0.0)
    for datagram in sender.datagrams_to_send()[:2]:
        receiver.receive(datagram, 0.0)
    receiver.events()
    return sender, receiver


@settings(deadline=None, max_examples=300)
@given(kind=st.sampled_from(list(Kind)), body=st.binary(max_size=120), tag=st.binary(min_size=16, max_size=16))
def test_right_ids_with_wrong_tags_change_nothing(kind: Kind, body: bytes, tag: bytes) -> None:
    sender, receiver = started_keyed(5_000)
    before = snapshot(sender), snapshot(receiver)
    for endpoint in (sender, receiver):
        endpoint.receive(forgery(kind, body, tag), 0.001)
        endpoint.receive(forgery(kind, body, b""), 0.001)
    assert (snapshot(sender), snapshot(receiver)) == before


def test_a_forged_abort_that_knows_everything_but_the_key_has_no_effect() -> None:
    sender, receiver = started_keyed(5_000)
    for endpoint in (sender, receiver):
        for key in (OTHER_KEY, None):
            endpoint.receive(wire.seal(wire.encode_abort(TID, "the file is infected"),
                                       wire.Mac(key) if key else None), 0.001)
    assert sender.state is receiver.state is State.RUNNING
    assert not sender.events() and not receiver.events()
    # ...while the real key's ABORT does end it, and says why
    receiver.receive(wire.seal(wire.encode_abort(TID, "disk full"), wire.Mac(KEY)), 0.002)
    assert receiver.events() == [Failed("sender aborted: disk full")]


def test_every_datagram_of_a_keyed_transfer_carries_a_valid_tag() -> None:
    seen: list[bytes] = []

    def tap(datagram: bytes, rng: random.Random, now: float) -> bytes:
        seen.append(datagram)
        return datagram

    keyed = {"key": KEY}
    outcome = Simulation(content_of(20_000, 3), forward=Link(hook=tap, loss=0.2), backward=Link(hook=tap),
                         seed=3, sender_kwargs={**keyed, "datagram_size": 1_000}, receiver_kwargs=keyed).run()
    assert isinstance(outcome.sender_final, Completed)
    mac = wire.Mac(KEY)
    assert {d[1] for d in seen} >= {Kind.HELLO, Kind.DATA, Kind.ACK, Kind.FIN, Kind.DONE}
    assert all(mac.check(d) for d in seen)


def amac(body: bytes) -> bytes:
    """PROTOCOL.md's tag, from its definition: SHA-256 of the key zero-padded to 64 bytes and
    every byte before the tag, its first 16 bytes."""
    return hashlib.sha256(KEY + bytes(32) + body).digest()[:16]


def test_every_kinds_tag_is_amac_sha256_of_every_byte_before_it() -> None:
    sender, _ = started_keyed(5_000)
    data = sender._store[0]
    assert len(data) == 1_000 and data[-16:] == amac(data[:-16])
    body = wire.encode_done(TID, bytes(32))
    assert wire.Mac(KEY).seal(body) == body + amac(body)


@settings(deadline=None, max_examples=100)
@given(position=st.integers(18, 1_000 - 1), bit=st.integers(0, 7))  # 0-17: magic, kind, id (test_transfer.py)
def test_a_data_with_any_bit_changed_is_dropped_and_the_true_one_taken(position: int, bit: int) -> None:
    """Header, chunk or tag: one bit changed and the DATA has no effect, even where the
    chunk-size field then disagrees (that would otherwise fail the transfer)."""
    sender, receiver = started_keyed(5_000)
    data = sender._store[2]  # the next chunk the receiver expects
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    before = snapshot(receiver)
    receiver.receive(bytes(damaged), 0.001)
    assert snapshot(receiver) == before and receiver.bytes_received == 2 * 958
    receiver.receive(data, 0.001)
    assert receiver.bytes_received == 3 * 958


def test_a_hostile_window_cannot_pin_more_than_the_bound() -> None:
    bound = 4 * 1024 * 1024
    sender = Sender(TID, 200 * 1024 * 1024, 0.0, datagram_size=65_507, key=KEY, max_in_flight=bound,
                    congestion_control=False)  # no ACK ever comes: only the window and the bound limit
    sender.receive(wire.Mac(KEY).seal(wire.encode_hello(TID, 2**32 - 1, 65_507)), 0.0)
    block = bytes(1 << 20)
    while n := sender.want_data():
        sender.feed(block[: min(n, len(block))], 0.0)
        sender.datagrams_to_send()
    held = sum(len(d) for d in sender._store.values())
    assert bound - 65_507 < held <= bound  # the bound is what limits
    assert sender.state is State.RUNNING


def test_the_controller_counts_whole_datagrams_tag_included() -> None:
    """The controller's window and pacer are in bytes on the wire: a keyed DATA's tag counts."""
    sender = Sender(TID, 200_000, 0.0, datagram_size=1_000, key=KEY)
    sender.receive(wire.Mac(KEY).seal(wire.encode_hello(TID, 1 << 20, 1_000)), 0.0)
    sender.feed(bytes(sender.want_data()), 0.0)
    sent = [d for d in sender.datagrams_to_send() if d[1] == Kind.DATA]
    assert sent and all(len(d) == 1_000 for d in sent)
    assert sender._inflight() == sum(map(len, sent))
    assert sender.controller is not None and sender._inflight() <= sender.controller.cwnd
