"""Properties of the length-prefixed frame codec (SPEC §7, §9)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.framing import DEFAULT_MAX_FRAME, HEADER, FrameDecoder, FrameError, encode

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

payloads = st.lists(st.binary(max_size=300), max_size=20)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed: empty pieces)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    return frames


def reference(stream: bytes, max_frame: int) -> tuple[list[bytes], int | None, int]:
    """An independent, non-incremental parse of a whole stream.

    Returns (frames, error_at, rest): the complete frames in order; the stream offset just
    past the header of the first over-long frame (None if there is none); and how many
    bytes trail the last complete frame (when there is no error).
    """
    frames = []
    pos = 0
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        if length > max_frame:
            return frames, pos + 4, 0
        if len(stream) - pos - 4 < length:
            break
        frames.append(stream[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, None, len(stream) - pos


# --- encoding ----------------------------------------------------------------------------

def test_encode_is_a_big_endian_four_byte_length_then_the_payload() -> None:
    assert encode(b"") == b"\x00\x00\x00\x00"
    assert encode(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode(b"x" * 258)[:4] == b"\x00\x00\x01\x02"
    assert HEADER.size == 4
    assert DEFAULT_MAX_FRAME == 64 * 1024


# --- round trip under any split ----------------------------------------------------------

@SETTINGS
@given(payloads, st.lists(st.integers(min_value=0), max_size=40))
def test_round_trip_under_any_chunking(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode(p) for p in items)
    decoder = FrameDecoder()
    assert feed_all(decoder, split(stream, cuts)) == items
    assert decoder.buffered == 0


@SETTINGS
@given(payloads)
def test_round_trip_one_byte_at_a_time_and_all_at_once(items: list[bytes]) -> None:
    stream = b"".join(encode(p) for p in items)
    one_by_one = FrameDecoder()
    assert feed_all(one_by_one, [stream[i : i + 1] for i in range(len(stream))]) == items
    whole = FrameDecoder()
    assert whole.feed(stream) == items
    assert one_by_one.buffered == whole.buffered == 0


@SETTINGS
@given(payloads, st.binary(min_size=1, max_size=3), st.lists(st.integers(min_value=0), max_size=10))
def test_an_incomplete_tail_is_kept_until_it_completes(items: list[bytes], head: bytes, cuts: list[int]) -> None:
    """Frames then a partial header: the frames come out, the partial bytes wait."""
    stream = b"".join(encode(p) for p in items)
    decoder = FrameDecoder()
    assert feed_all(decoder, split(stream + head, cuts)) == items
    assert decoder.buffered == len(head)


def test_frame_of_exactly_the_limit_is_accepted_and_one_more_is_not() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError):
        FrameDecoder(max_frame=10).feed(encode(b"x" * 11))
    big = FrameDecoder()
    assert big.feed(encode(b"y" * DEFAULT_MAX_FRAME)) == [b"y" * DEFAULT_MAX_FRAME]
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", DEFAULT_MAX_FRAME + 1))


def test_empty_feeds_are_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x00\x01") == []
    assert decoder.buffered == 4
    assert decoder.feed(b"!") == [b"!"]
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


# --- over-long frames are refused on the header alone --------------------------------------

@SETTINGS
@given(
    st.integers(min_value=0, max_value=1000),
    st.data(),
    payloads,
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_over_long_header_is_rejected_as_soon_as_the_header_arrives(
    max_frame: int, data: st.DataObject, items: list[bytes], cuts: list[int]
) -> None:
    length = data.draw(st.integers(min_value=max_frame + 1, max_value=2**32 - 1), label="length")
    items = [p for p in items if len(p) <= max_frame]
    good = b"".join(encode(p) for p in items)
    decoder = FrameDecoder(max_frame=max_frame)
    # the valid frames before it come out whatever the split
    assert feed_all(decoder, split(good, cuts)) == items
    header = struct.pack("!I", length)
    # three header bytes are not enough to judge: nothing is raised, nothing much is kept
    for i in range(3):
        assert decoder.feed(header[i : i + 1]) == []
        assert decoder.buffered == i + 1
    # the fourth byte completes the header: refused there, with no body byte sent at all
    with pytest.raises(FrameError):
        decoder.feed(header[3:])
    assert decoder.buffered <= 4


@SETTINGS
@given(payloads, st.integers(min_value=DEFAULT_MAX_FRAME + 1, max_value=2**32 - 1))
def test_frames_fed_with_a_bad_header_travel_on_the_error(items: list[bytes], length: int) -> None:
    """One feed holding good frames and then a bad header loses none of the good ones."""
    with pytest.raises(FrameError) as refused:
        FrameDecoder().feed(b"".join(encode(p) for p in items) + struct.pack("!I", length))
    assert refused.value.frames == items


@SETTINGS
@given(st.integers(min_value=DEFAULT_MAX_FRAME + 1, max_value=2**32 - 1), st.integers(min_value=0, max_value=3))
def test_over_long_header_in_one_piece_with_a_little_body(length: int, body: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(struct.pack("!I", length) + b"b" * body)
    # the decoder never allocated anything like the announced length
    assert decoder.buffered <= 4 + body


# --- garbage in gives frames or FrameError, never anything else --------------------------

@settings(deadline=None, max_examples=300)
@given(
    st.integers(min_value=0, max_value=64),
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_random_bytes_in_random_chunks_give_frames_or_frame_error(max_frame: int, stream: bytes, cuts: list[int]) -> None:
    expected, error_at, rest = reference(stream, max_frame)
    decoder = FrameDecoder(max_frame=max_frame)
    frames: list[bytes] = []
    fed = 0
    raised = False
    for piece in split(stream, cuts):
        try:
            frames += decoder.feed(piece)
        except FrameError:
            raised = True
            # it fails exactly on the piece that completed the bad header, not later
            assert error_at is not None and fed < error_at <= fed + len(piece)
            break
        # any other exception propagates and fails the test
        fed += len(piece)
    # the frames before the error (or all of them) are those of the stream, in order
    assert frames == expected[: len(frames)]
    if error_at is None:
        assert not raised
        assert frames == expected
        assert decoder.buffered == rest
    else:
        assert raised
        # frames that a piece delivered together with the bad header are lost with it,
        # but every frame that ended in an earlier piece was delivered
        complete_before = [f for f, end in _frame_ends(stream, expected) if end <= fed]
        assert frames[: len(complete_before)] == complete_before


def _frame_ends(stream: bytes, frames: list[bytes]) -> list[tuple[bytes, int]]:
    out = []
    pos = 0
    for f in frames:
        pos += 4 + len(f)
        out.append((f, pos))
    return out


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=30))
def test_garbage_with_default_limit_never_raises_anything_but_frame_error(stream: bytes, cuts: list[int]) -> None:
    expected, error_at, _ = reference(stream, DEFAULT_MAX_FRAME)
    decoder = FrameDecoder()
    frames: list[bytes] = []
    try:
        for piece in split(stream, cuts):
            frames += decoder.feed(piece)
    except FrameError as exc:
        assert error_at is not None
        assert "exceeds" in str(exc)
    else:
        assert error_at is None
    assert frames == expected[: len(frames)]


# --- memory stays bounded ----------------------------------------------------------------

def _physical_size(decoder: FrameDecoder) -> int:
    # white box: the bytes the decoder holds, consumed or not
    return len(decoder._buffer)


def test_buffer_does_not_grow_on_a_long_stream_of_small_frames() -> None:
    """Pieces never end on a frame boundary, so the buffer is never simply emptied."""
    frame = encode(b"1234567")  # 11 bytes
    decoder = FrameDecoder()
    assert decoder.feed(frame[:1]) == []
    stream_piece = frame[1:] + frame[:1]  # the rest of one frame and the start of the next
    peak = 0
    count = 0
    for _ in range(100_000):  # 1.1 MB in all
        count += len(decoder.feed(stream_piece))
        peak = max(peak, _physical_size(decoder))
        assert decoder.buffered == 1
    assert count == 100_000
    assert peak <= 64 * 1024 + 2 * len(frame)


@settings(deadline=None, max_examples=20)
@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=20),
    st.integers(min_value=7, max_value=97),
)
def test_buffer_stays_bounded_for_any_frame_sizes_and_piece_size(items: list[bytes], piece: int) -> None:
    stream = b"".join(encode(p) for p in items) * (150_000 // max(1, sum(4 + len(p) for p in items)) + 1)
    decoder = FrameDecoder()
    total = 0
    for i in range(0, len(stream), piece):
        total += len(decoder.feed(stream[i : i + piece]))
        assert _physical_size(decoder) <= 64 * 1024 + 2 * (44 + piece)
    assert decoder.buffered == 0
    assert total * sum(4 + len(p) for p in items) == len(stream) * len(items)


# --- append / take: frames in batches -------------------------------------------------------

def drain(decoder: FrameDecoder, limit: int) -> list[bytes]:
    frames: list[bytes] = []
    while batch := decoder.take(limit):
        assert len(batch) <= limit
        frames += batch
    assert not decoder.ready  # nothing left that take would return
    return frames


@settings(deadline=None, max_examples=300)
@given(
    st.integers(min_value=0, max_value=64),
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0), max_size=30),
    st.integers(min_value=1, max_value=5),
)
def test_take_yields_every_frame_before_an_over_long_one(max_frame: int, stream: bytes, cuts: list[int],
                                                        limit: int) -> None:
    """Unlike feed(), which drops a piece's frames when the piece also holds a bad header."""
    expected, error_at, rest = reference(stream, max_frame)
    decoder = FrameDecoder(max_frame=max_frame)
    frames: list[bytes] = []
    fed = 0
    raised = False
    for piece in split(stream, cuts):
        decoder.append(piece)
        fed += len(piece)
        try:
            frames += drain(decoder, limit)
        except FrameError:
            raised = True
            assert error_at is not None and error_at <= fed
            break
    assert frames == expected  # all of them, before the error too
    assert raised == (error_at is not None)
    if not raised:
        assert decoder.buffered == rest
    else:
        assert decoder.ready
        with pytest.raises(FrameError):  # and it stays broken
            decoder.take(1)


def test_take_on_an_empty_or_partial_buffer_is_empty() -> None:
    decoder = FrameDecoder()
    assert decoder.take(1) == [] and not decoder.ready
    decoder.append(encode(b"abc")[:5])
    assert decoder.take(1) == [] and not decoder.ready
    assert decoder.buffered == 5
    decoder.append(b"bc" + encode(b"d") + encode(b"ef"))
    assert decoder.ready
    assert decoder.take(2) == [b"abc", b"d"]
    assert decoder.take(2) == [b"ef"]
    assert decoder.take(2) == []
    assert decoder.buffered == 0


@given(st.lists(st.binary(max_size=20), max_size=8), st.integers(min_value=0, max_value=8), st.binary(max_size=30))
def test_unread_frames_come_out_again_first(payloads: list[bytes], handled: int, partial: bytes) -> None:
    decoder = FrameDecoder()
    tail = encode(b"next")[:-1] if partial else b""  # a frame not yet whole stays behind them
    decoder.append(b"".join(map(encode, payloads)) + tail)
    taken = decoder.take(len(payloads))
    assert taken == payloads
    decoder.unread(taken[handled:])
    decoder.append(b"t" if tail else b"")
    again = decoder.take(100)
    assert again == payloads[handled:] + ([b"next"] if tail else [])
    assert decoder.buffered == 0


def test_the_limit_may_change_between_calls() -> None:
    decoder = FrameDecoder(max_frame=8)
    decoder.append(encode(b"login") + encode(b"x" * 100) + encode(b"y" * 1000))
    assert decoder.take(10) == [b"login"]  # stops before the frame its limit refuses
    assert decoder.ready
    with pytest.raises(FrameError):
        decoder.take(10)
    decoder.max_frame = 100  # e.g. raised once the connection has logged in
    assert decoder.take(10) == [b"x" * 100]
    with pytest.raises(FrameError):
        decoder.take(10)
    decoder.max_frame = 64 * 1024
    assert decoder.take(10) == [b"y" * 1000]
    assert decoder.buffered == 0


def test_take_buffer_stays_bounded() -> None:
    frame = encode(b"123456")
    decoder = FrameDecoder()
    decoder.append(frame[:3])
    for _ in range(50_000):
        decoder.append(frame[3:] + frame[:3])
        assert decoder.take(5) == [b"123456"]
        assert _physical_size(decoder) <= 64 * 1024 + 2 * len(frame)
