"""The end-to-end digest of a transfer (core/transfer_digest.py): the FIN and DONE carry the
SHA-256 hash list PROTOCOL.md defines, resumed or not, keyed or not; a resume record is
checked against it."""

from __future__ import annotations

import hashlib
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from core import transfer_wire as wire
from core.transfer import Completed, Failed, Receiver, Sender, State
from core.transfer_digest import Checkpoint, PrefixCheck
from core.transfer_wire import Kind
from tests.test_transfer import TID, Link, Simulation, content_of


def hash_list(data: bytes, base: int, chunk: int, transfer_id: bytes = TID, key: bytes | None = None) -> bytes:
    """PROTOCOL.md's digest, written from its definition alone: the SHA-256 of the prefix,
    then each chunk's DATA datagram (magic 0x71, kind 2, id, index, chunk size, chunk)
    hashed after the key zero-padded to 64 bytes (nothing without a key)."""
    key_block = key.ljust(64, b"\0") if key is not None else b""
    terms = [hashlib.sha256(data[:base]).digest()]
    terms += [hashlib.sha256(key_block + struct.pack("!BB16sII", 0x71, 2, transfer_id, n, chunk) + data[i : i + chunk]).digest()
              for n, i in enumerate(range(base, len(data), chunk))]
    return hashlib.sha256(b"".join(terms)).digest()


def fins(content: bytes, **kwargs: object) -> tuple[list[bytes], object]:
    seen: list[bytes] = []

    def tap(datagram: bytes, rng: random.Random, now: float) -> bytes:
        if datagram[1] == Kind.FIN:
            seen.append(datagram)
        return datagram

    outcome = Simulation(content, forward=Link(hook=tap), seed=1, sender_kwargs={"datagram_size": 1_000, **kwargs},
                         receiver_kwargs=dict(kwargs)).run()
    return seen, outcome.receiver_final


@settings(deadline=None, max_examples=20)
@given(size=st.integers(0, 20_000), keyed=st.booleans())
def test_the_fin_carries_the_hash_list_of_the_chunks(size: int, keyed: bool) -> None:
    content = content_of(size, size)
    key = bytes(range(32)) if keyed else None
    seen, final = fins(content, key=key)
    chunk = 1_000 - wire.DATA_HEADER_SIZE - (wire.TAG_SIZE if keyed else 0)
    body = seen[0][: -wire.TAG_SIZE] if keyed else seen[0]
    assert wire.decode_fin(body) == (size, hash_list(content, 0, chunk, key=key))
    assert final == Completed()


def run_resumed(data: bytes, base: int, held: bytes) -> tuple[Sender, Receiver, list[bytes]]:
    """A receiver holding ``held`` as the first ``base`` bytes; every datagram the sender sent."""
    receiver = Receiver(TID, len(data), 0.0, resume=base, prefix_hash=hashlib.sha256(held))
    sender = Sender(TID, len(data), 0.0, datagram_size=1_000, congestion_control=False)
    sent: list[bytes] = []
    fed, now = 0, 0.0
    while not (receiver.closed and sender.closed) and now < 60:
        while n := sender.want_data():
            sender.feed(data[fed : fed + n], now)
            fed += n
        for datagram in sender.datagrams_to_send():
            sent.append(datagram)
            receiver.receive(datagram, now)
        for datagram in receiver.datagrams_to_send():
            sender.receive(datagram, now)
        receiver.events()
        now += 0.01
        for endpoint in (sender, receiver):
            endpoint.on_timer(now)
    return sender, receiver, sent


def test_a_resumed_transfers_digest_starts_with_the_prefixs_sha256() -> None:
    data = random.Random(5).randbytes(10_000)
    sender, receiver, sent = run_resumed(data, 4_000, data[:4_000])
    fin = next(d for d in sent if d[1] == Kind.FIN)
    assert wire.decode_fin(fin) == (len(data), hash_list(data, 4_000, 1_000 - wire.DATA_HEADER_SIZE))
    assert sender.state is receiver.state is State.COMPLETED


def test_a_resume_from_the_whole_file_checks_the_prefix_alone() -> None:
    data = random.Random(6).randbytes(3_000)
    sender, receiver, sent = run_resumed(data, 3_000, data)
    assert [d[1] for d in sent] == [Kind.FIN] and sender.state is receiver.state is State.COMPLETED
    assert wire.decode_fin(sent[0]) == (3_000, hashlib.sha256(hashlib.sha256(data).digest()).digest())


def test_a_fin_with_another_digest_fails_the_transfer() -> None:
    """Every byte arrives, but the FIN carries the plain SHA-256 of the file, not its hash
    list: the final check fails the transfer on both sides."""
    content = content_of(5_000, 7)

    def plain_fin(datagram: bytes, rng: random.Random, now: float) -> bytes:
        if datagram[1] != Kind.FIN:
            return datagram
        return wire.encode_fin(TID, len(content), hashlib.sha256(content).digest())

    outcome = Simulation(content, forward=Link(hook=plain_fin), seed=2, sender_kwargs={"datagram_size": 1_000}).run()
    assert outcome.receiver_final == Failed("SHA-256 mismatch: the data received differs from the file sent")
    assert isinstance(outcome.sender_final, Failed)


blocks = st.lists(st.integers(1, 5_000), min_size=1, max_size=30)


@settings(deadline=None, max_examples=200)
@given(size=st.integers(1, 20_000), base=st.floats(0, 1), chunk=st.integers(1, 3_000), chunks=st.integers(0, 20),
       splits=blocks, seed=st.integers(0, 2**32), keyed=st.booleans())
def test_a_recorded_prefix_checks_out_in_blocks_of_any_size(
    size: int, base: float, chunk: int, chunks: int, splits: list[int], seed: int, keyed: bool
) -> None:
    data = random.Random(seed).randbytes(size)
    held = int(base * size)
    offset = min(size, held + chunks * chunk)  # whole chunks delivered, or all of them (the last short)
    if offset == 0:
        return
    key = bytes(range(32)) if keyed else None
    point = Checkpoint(offset, held, chunk, hash_list(data[:offset], held, chunk, key=key), TID, key)

    def fed(prefix: bytes) -> PrefixCheck:
        check = PrefixCheck(point)
        position, i = 0, 0
        while position < len(prefix):
            step = splits[i % len(splits)]
            check.update(prefix[position : position + step])
            position, i = position + step, i + 1
        return check

    check = fed(data[:offset])
    assert check.matches() and check.plain.digest() == hashlib.sha256(data[:offset]).digest()
    changed = bytearray(data[:offset])
    changed[seed % offset] ^= 1
    assert not fed(bytes(changed)).matches()
    assert not fed(data[: offset - 1]).matches()
    assert not fed(data[:offset] + b"\0").matches()


def test_a_receivers_checkpoint_is_what_a_prefix_check_accepts() -> None:
    data = random.Random(8).randbytes(10_000)
    receiver = Receiver(TID, len(data), 0.0, resume=1_234, prefix_hash=hashlib.sha256(data[:1_234]))
    sender = Sender(TID, len(data), 0.0, datagram_size=1_000, congestion_control=False)
    sender.receive(receiver.datagrams_to_send()[0], 0.0)
    sender.feed(data[:1_234], 0.0)
    sender.feed(data[1_234:6_000], 0.0)
    datagrams = sender.datagrams_to_send()
    for datagram in datagrams[:2] + datagrams[3:]:  # chunk 2 missing: only chunks 0 and 1 count
        receiver.receive(datagram, 0.0)
    point = receiver.checkpoint()
    assert (point.offset, point.base, point.chunk) == (1_234 + 2 * 974, 1_234, 974)
    check = PrefixCheck(point)
    check.update(data[: point.offset])
    assert check.matches()
