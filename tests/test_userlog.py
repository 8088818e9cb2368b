"""userlog.txt's text kept as lines (core/userlog.py): exact whenever asked, however logins,
logouts and rewrites interleave."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.logformat import userlog_entry, userlog_line
from core.userlog import UserLog

TS = "29 Nov 2026 21:40:01"


def entry(name: str, port: int = 9) -> str:
    return userlog_entry(TS, name, "10.0.0.1", port)


def expected(active: dict[str, int]) -> str:
    return "".join(userlog_line(seq, TS, name, "10.0.0.1", port) for seq, (name, port) in
                   enumerate(active.items(), start=1))


def test_empty() -> None:
    assert UserLog().text() == ""


def test_logins_append_and_a_logout_renumbers_only_what_follows() -> None:
    log = UserLog()
    for port, name in enumerate(["Yoda", "Hans", "Leia", "Luke"]):
        log.add(name, entry(name, port))
    assert log.text() == expected({"Yoda": 0, "Hans": 1, "Leia": 2, "Luke": 3})
    log.remove("Hans")
    log.add("Han", entry("Han", 7))
    assert log.text() == expected({"Yoda": 0, "Leia": 2, "Luke": 3, "Han": 7})
    log.remove("Han")  # the last line: nothing before it moves
    assert log.text() == expected({"Yoda": 0, "Leia": 2, "Luke": 3})


def test_logouts_between_two_rewrites() -> None:
    """Several logouts, in any order, and a user back again, all before the next text()."""
    log = UserLog()
    for name in "abcdef":
        log.add(name, entry(name))
    log.text()
    log.remove("e")
    log.remove("b")
    log.add("g", entry("g"))
    log.remove("g")  # made and gone without a rewrite between
    log.add("b", entry("b", 2))
    assert log.text() == expected({"a": 9, "c": 9, "d": 9, "f": 9, "b": 2})


operations = st.lists(st.tuples(st.sampled_from(["add", "remove", "text"]), st.integers(0, 7)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_text_is_exact_whenever_asked(ops: list[tuple[str, int]]) -> None:
    log = UserLog()
    active: dict[str, int] = {}  # the model: username -> UDP port, in login order
    for step, (kind, who) in enumerate(ops):
        name = f"user{who}"
        if kind == "add" and name not in active:
            log.add(name, entry(name, step))
            active[name] = step
        elif kind == "remove" and name in active:
            log.remove(name)
            del active[name]
        elif kind == "text":
            assert log.text() == expected(active)
    assert log.text() == expected(active)
