"""The pure parts of the terminal client: Tab completion candidates, row layout."""

from __future__ import annotations

from hypothesis import given, strategies as st

from core import commands
from core.completion import Names, candidates
from core.messages import ActiveUserEntry, ActiveUsers, GroupInvite, GroupMessage, PrivateMessage
from core.screen import cells, fit, hanging_indent, rows, wrap


def names() -> Names:
    heard = Names()
    heard.observe(ActiveUsers([ActiveUserEntry("Luke", "127.0.0.1", 9, "t"), ActiveUserEntry("Leia", "127.0.0.1", 9, "t")]))
    heard.observe(PrivateMessage("Lando", "hi", "t"))
    heard.observe(GroupInvite("rebels", "Han"))
    heard.observe(GroupMessage("jedi", "Yoda", "hi", "t"))
    return heard


def test_command_words_complete_first() -> None:
    assert candidates("", "/ms", names()) == ["/msgto"]
    assert candidates("", "/", names()) == list(commands.WORDS)
    assert "/quit" in candidates("", "/q", names()) and candidates("/help ", "/gr", names()) == ["/groupmsg", "/groupvideo"]


def test_usernames_where_a_username_goes_never_oneself() -> None:
    heard = names()
    assert candidates("/msgto ", "L", heard, me="Yoda") == ["Luke", "Leia", "Lando"]
    assert candidates("/msgto ", "", heard, me="Luke") == ["Leia", "Lando", "Han", "Yoda"]
    assert candidates("/msgto 2 Luke ", "Le", heard) == ["Leia"]  # the counted form: two names
    assert candidates("/msgto 2 Luke Leia ", "L", heard) == []  # then the message
    assert candidates("/msgto Luke ", "L", heard) == []
    assert candidates("/creategroup g1 Luke ", "Le", heard) == ["Leia"]
    assert candidates("/creategroup ", "", heard) == []  # a new group's name
    assert candidates("/p2pvideo ", "Ha", heard) == ["Han"]
    assert candidates("/quit ", "", heard) == []


def test_group_names_where_a_group_name_goes() -> None:
    heard = names()
    for command in ("/joingroup", "/groupmsg", "/groupvideo"):
        assert candidates(command + " ", "", heard) == ["rebels", "jedi"]
    assert candidates("/groupmsg jedi ", "", heard) == []


def test_wide_and_joining_characters_take_their_cells() -> None:
    assert cells("abc") == 3 and cells("日本") == 4 and cells("e\u0301") == 1
    assert cells("\U0001F468\u200d\U0001F469") == 4
    assert fit("日本語", 5) == "日本" and fit("abc", 5) == "abc"
    assert rows(0, 80) == 1 and rows(80, 80) == 1 and rows(81, 80) == 2


def test_continuation_rows_are_indented_under_a_messages_text() -> None:
    line = "29 Nov 2026 09:00:00, Luke: hi" + " " * 50 + "29 Nov 2026 10:00:00, Leia: send me your password"
    first, second = wrap(line, 80)
    assert first == line[:80] and second == " " * 28 + line[80:]
    assert wrap("x" * 100, 80) == ["x" * 80, "  " + "x" * 20]
    assert wrap("short", 80) == ["short"]


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=300), st.integers(10, 120))
def test_wrapped_rows_fit_and_keep_every_character(line: str, columns: int) -> None:
    wrapped = wrap(line, columns)
    indent = hanging_indent(line, columns)
    assert all(cells(row) <= columns for row in wrapped)
    assert wrapped[0] + "".join(row[indent:] for row in wrapped[1:]) == line
    assert all(row.startswith(" " * indent) for row in wrapped[1:])
