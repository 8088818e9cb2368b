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


def text(log: UserLog) -> str:
    return log.text().tobytes().decode()


def expected(active: dict[str, int]) -> str:
    return "".join(userlog_line(seq, TS, name, "10.0.0.1", port) for seq, (name, port) in
                   enumerate(active.items(), start=1))


def test_empty() -> None:
    assert text(UserLog()) == ""


def test_logins_append_and_a_logout_renumbers_only_what_follows() -> None:
    log = UserLog()
    for port, name in enumerate(["Yoda", "Hans", "Leia", "Luke"]):
        log.add(name, entry(name, port))
    assert text(log) == expected({"Yoda": 0, "Hans": 1, "Leia": 2, "Luke": 3})
    log.remove("Hans")
    log.add("Han", entry("Han", 7))
    assert text(log) == expected({"Yoda": 0, "Leia": 2, "Luke": 3, "Han": 7})
    log.remove("Han")  # the last line: nothing before it moves
    assert text(log) == expected({"Yoda": 0, "Leia": 2, "Luke": 3})


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
    assert text(log) == expected({"a": 9, "c": 9, "d": 9, "f": 9, "b": 2})


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
            assert text(log) == expected(active)
    assert text(log) == expected(active)


def test_names_beyond_ascii_keep_their_lines_whole() -> None:
    """Lines are cut by their UTF-8 length: a renumbering after a wide name cuts where it ends."""
    log = UserLog()
    for name in ["Zoë", "李小龍", "Yoda", "Ünal"]:
        log.add(name, entry(name))
    text(log)
    log.remove("李小龍")
    assert text(log) == expected({"Zoë": 9, "Yoda": 9, "Ünal": 9})


def test_a_text_still_held_is_left_as_it_was() -> None:
    """The text given out is a view of the kept bytes: held past the next change, it keeps
    what it showed, and the next text is right."""
    log = UserLog()
    log.add("Yoda", entry("Yoda"))
    held = log.text()
    log.add("Hans", entry("Hans"))
    assert text(log) == expected({"Yoda": 9, "Hans": 9})
    assert held.tobytes().decode() == expected({"Yoda": 9})
    log.remove("Yoda")
    assert text(log) == expected({"Hans": 9})
