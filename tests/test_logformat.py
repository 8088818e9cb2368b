"""Log line formats, timestamps and crash repair (SPEC §3)."""

from __future__ import annotations

import os
import re
import time
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import logformat
from core.logformat import (
    TAIL_BYTES, TIMESTAMP_FORMAT, Clock, LogScan, group_log_name, group_of_log, message_line, scan_log,
    userlog_line,
)
from core.messages import MAX_NAME, MAX_TEXT, valid_name, valid_text

TIMESTAMP = re.compile(r"^\d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2}$")

texts = st.text(st.one_of(st.characters(categories=("L", "M", "N", "P", "S")), st.just(" ")), min_size=1,
                max_size=80).filter(lambda t: valid_text(t) is None)
names = st.text(st.characters(categories=("L", "M", "N", "P", "S")), min_size=1, max_size=12).filter(valid_name)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- names -------------------------------------------------------------------------------

def test_log_file_names() -> None:
    assert logformat.USERLOG == "userlog.txt"
    assert logformat.MESSAGELOG == "messagelog.txt"
    assert group_log_name("Jedi") == "Jedi_messagelog.txt"
    assert group_of_log("Jedi_messagelog.txt") == "Jedi"
    assert group_of_log("g1_messagelog.txt") == "g1"
    for not_a_group in ("messagelog.txt", "userlog.txt", "_messagelog.txt", "a-b_messagelog.txt",
                        "grüppe_messagelog.txt", "a b_messagelog.txt", "Jedi_messagelog.txt.tmp",
                        "credentials.txt", "x_y_messagelog.txt"):
        assert group_of_log(not_a_group) is None, not_a_group


@given(st.text(st.characters(min_codepoint=48, max_codepoint=122).filter(str.isalnum), min_size=1, max_size=20))
def test_group_log_name_round_trip(group: str) -> None:
    assert group_of_log(group_log_name(group)) == (group if group.isascii() else None)


# --- line formats ------------------------------------------------------------------------

def test_message_line_exact_format() -> None:
    assert message_line(1, "01 Jun 2023 15:00:01", "Yoda", "hello there") == "1; 01 Jun 2023 15:00:01; Yoda; hello there\n"
    assert message_line(1234, "31 Dec 2023 23:59:59", "Hans", "a; b") == "1234; 31 Dec 2023 23:59:59; Hans; a; b\n"


def test_userlog_line_exact_format() -> None:
    assert userlog_line(1, "01 Jun 2023 21:30:04", "Yoda", "129.64.1.11", 6666) == (
        "1; 01 Jun 2023 21:30:04; Yoda; 129.64.1.11; 6666\n"
    )


@settings(deadline=None, max_examples=100)
@given(st.integers(min_value=1, max_value=10**9), names, texts)
def test_a_message_line_is_exactly_one_line(number: int, name: str, text: str) -> None:
    stamp = "01 Jun 2023 15:00:01"
    line = message_line(number, stamp, name, text)
    assert line.endswith("\n") and "\r" not in line
    assert len(line.splitlines()) == 1  # not even U+2028, U+0085 or FS split it
    assert len(line.encode().splitlines()) == 1
    assert line.split("; ", 1)[0] == str(number)
    assert line == f"{number}; {stamp}; {name}; {text}\n"
    scan = scan_log(line.encode(), 0)
    assert scan == LogScan(len(line.encode()), number)


# --- timestamps --------------------------------------------------------------------------

def test_clock_format(utc: None) -> None:
    clock = Clock()
    assert TIMESTAMP_FORMAT == "%d %b %Y %H:%M:%S"
    assert clock.timestamp(1685631601.0) == "01 Jun 2023 15:00:01"
    assert clock.timestamp(1685631601.999) == "01 Jun 2023 15:00:01"
    assert clock.timestamp(1685631602.0) == "01 Jun 2023 15:00:02"
    assert clock.timestamp(0.0) == "01 Jan 1970 00:00:00"
    assert clock.timestamp(1704067199.5) == "31 Dec 2023 23:59:59"


def test_clock_uses_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv("TZ", "Australia/Sydney")
        time.tzset()
        if time.strftime("%Z", time.localtime(1685631601)) in ("UTC", "GMT"):
            pytest.skip("no time zone database")
        assert Clock().timestamp(1685631601.0) == "02 Jun 2023 01:00:01"
    finally:
        monkeypatch.undo()
        time.tzset()


@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=30))
def test_clock_cache_never_returns_a_stale_second(times: list[float]) -> None:
    """Formatting once per second must give what formatting every time would, in any order."""
    clock = Clock()
    for t in times:
        stamp = clock.timestamp(t)
        assert stamp == time.strftime(TIMESTAMP_FORMAT, time.localtime(int(t)))
        assert TIMESTAMP.match(stamp)


# --- crash repair ------------------------------------------------------------------------

def log_bytes(first: int, count: int, text: str = "hello") -> bytes:
    return "".join(message_line(n, "01 Jun 2023 15:00:01", "Yoda", text) for n in range(first, first + count)).encode()


def test_scan_empty_log() -> None:
    assert scan_log(b"", 0) == LogScan(0, 0)


def test_scan_whole_lines() -> None:
    data = log_bytes(1, 3)
    assert scan_log(data, 0) == LogScan(len(data), 3)


def test_scan_torn_last_line_is_cut_off() -> None:
    data = log_bytes(1, 3)
    for torn in (b"4", b"4;", b"4; 01 Jun 2023", b"4; 01 Jun 2023 15:00:01; Yoda; hel"):
        assert scan_log(data + torn, 0) == LogScan(len(data), 3)


def test_scan_only_a_torn_line() -> None:
    assert scan_log(b"1; 01 Jun 2023 15:00:01; Yo", 0) == LogScan(0, 0)


def test_scan_torn_multibyte_character() -> None:
    data = log_bytes(1, 2)
    torn = message_line(3, "01 Jun 2023 15:00:01", "Yoda", "grüße 🎉").encode()[:-3]
    assert scan_log(data + torn, 0) == LogScan(len(data), 2)


def test_scan_tail_starting_mid_line() -> None:
    data = log_bytes(120, 5)  # lines 120..124
    # a tail starting inside "123; ..." begins with "3; ..." or "23; ...": that fragment is not a line
    start = data.index(b"123;") + 1
    tail = data[start : data.index(b"124;")]
    assert scan_log(tail, start) == LogScan(start + len(tail), 0)
    # with a whole line after the fragment, that line's number counts
    tail = data[start:]
    assert scan_log(tail, start) == LogScan(len(data), 124)
    # and a torn line after it is still cut
    torn = b"125; 01 Jun"
    assert scan_log(tail + torn, start) == LogScan(len(data), 124)


def test_scan_skips_lines_without_a_number() -> None:
    data = log_bytes(1, 2) + b"\n"  # a stray empty line at the end
    assert scan_log(data, 0) == LogScan(len(data), 2)


def test_scan_newly_created_group_log() -> None:
    # an empty group log (created, no messages yet)
    assert scan_log(b"", 0) == LogScan(0, 0)


@settings(deadline=None, max_examples=60)
@given(
    st.integers(min_value=1, max_value=10**6),
    st.lists(texts, min_size=1, max_size=15),
    st.data(),
)
def test_scan_of_any_tail_finds_the_last_whole_line(first: int, lines: list[str], data: st.DataObject) -> None:
    """What recovery sees: the last ``tail`` bytes of a log whose last line may be torn."""
    whole = "".join(
        message_line(first + i, "01 Jun 2023 15:00:01", "Yoda", text) for i, text in enumerate(lines)
    ).encode()
    nxt = message_line(first + len(lines), "01 Jun 2023 15:00:01", "Yoda", "next one").encode()
    torn = nxt[: data.draw(st.integers(min_value=0, max_value=len(nxt) - 1), label="torn")]
    content = whole + torn
    last_line_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    # any tail that begins before the last whole line (inside or at the start of an earlier one)
    offset = data.draw(st.integers(min_value=0, max_value=max(0, last_line_start - 1)), label="offset")
    scan = scan_log(content[offset:], offset)
    assert scan == LogScan(len(whole), first + len(lines) - 1)


def test_tail_is_big_enough_for_the_longest_line() -> None:
    longest = message_line(10**12, "01 Jun 2023 15:00:01", "\U0010fffd" * MAX_NAME, "\U0010fffd" * MAX_TEXT).encode()
    # the last whole line and a torn one after it always fit, with room for the line before
    assert 2 * len(longest) < TAIL_BYTES


def test_recovery_as_the_server_does_it(tmp_path: os.PathLike[str]) -> None:
    """Read the last TAIL_BYTES, scan, truncate: numbering continues, whole lines stay."""
    path = os.path.join(tmp_path, "messagelog.txt")
    data = log_bytes(1, 2000, text="x" * 50)
    with open(path, "wb") as f:
        f.write(data + b"2001; 01 Jun 20")
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        offset = max(0, size - TAIL_BYTES)
        f.seek(offset)
        scan = scan_log(f.read(), offset)
        f.truncate(scan.whole_length)
    assert scan.last_number == 2000
    with open(path, "rb") as f:
        assert f.read() == data
