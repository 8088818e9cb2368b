"""The command-line parser (core/commands.py): exact lines of SPEC §5, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from core import commands
from core.commands import (
    ActiveUser, CreateGroup, GroupMsg, GroupVideo, Help, JoinGroup, Logout, MsgTo, P2PVideo,
    Rejected, parse,
)
from core.messages import MAX_TEXT
from core.render import printable

USAGE_MSGTO = "Error. Usage: /msgto USERNAME MESSAGE"
USAGE_MSGTO_N = "Error. Usage: /msgto N USER1 .. USERN MESSAGE"


@pytest.mark.parametrize("line, command", [
    ("/msgto Luke hello", MsgTo(("Luke",), "hello")),
    ("  /msgto   Luke   hello   there  ", MsgTo(("Luke",), "hello   there")),  # inner spacing kept
    ("/msgto Luke ünïcödé ✓", MsgTo(("Luke",), "ünïcödé ✓")),
    ("/msgto 2 Luke Leia hi all", MsgTo(("Luke", "Leia"), "hi all", counted=True)),
    ("/msgto 1 Luke 3 apples", MsgTo(("Luke",), "3 apples", counted=True)),
    ("/msgto Luke " + "x" * MAX_TEXT, MsgTo(("Luke",), "x" * MAX_TEXT)),
    ("/activeuser", ActiveUser()),
    ("/creategroup g1 Luke Leia", CreateGroup("g1", ("Luke", "Leia"))),
    ("/joingroup g1", JoinGroup("g1")),
    ("/groupmsg g1 hi there", GroupMsg("g1", "hi there")),
    ("/p2pvideo Luke test.mp4", P2PVideo("Luke", "test.mp4")),
    ("/p2pvideo Luke videos/my film.mp4", P2PVideo("Luke", "videos/my film.mp4")),
    ("/groupvideo g1 test.mp4", GroupVideo("g1", "test.mp4")),
    ("/logout", Logout()),
    ("/logout  ", Logout()),
    ("/help", Help()),
    ("/help msgto", Help("/msgto")),
    ("/help /groupmsg", Help("/groupmsg")),
    ("/quit", Logout()),
    ("/exit", Logout()),
])
def test_commands_parse(line: str, command: commands.Command) -> None:
    assert parse(line) == command


@pytest.mark.parametrize("line, error", [
    # SPEC §5 usage errors
    ("/msgto", USAGE_MSGTO),
    ("/msgto Luke", USAGE_MSGTO),
    ("/msgto Luke    ", USAGE_MSGTO),
    ("/msgto 2 Luke hi", USAGE_MSGTO_N),  # fewer than N usernames before the message
    ("/msgto 2 Luke Leia", USAGE_MSGTO_N),  # no message
    ("/msgto 0 hi", USAGE_MSGTO_N),
    ("/msgto 3", USAGE_MSGTO_N),
    ("/msgto 99999999999999999999 a b", USAGE_MSGTO_N),
    ("/activeuser now", "Error. Usage: /activeuser"),
    ("/creategroup", "Error. Usage: /creategroup GROUPNAME USER1 [USER2 ...]"),
    ("/creategroup g1", "Please enter at least one more active users."),
    ("/creategroup my-group Luke", "Error. Group name must contain only letters and digits."),
    ("/creategroup gröup Luke", "Error. Group name must contain only letters and digits."),
    ("/joingroup", "Error. Usage: /joingroup GROUPNAME"),
    ("/joingroup g1 g2", "Error. Usage: /joingroup GROUPNAME"),
    ("/groupmsg", "Error. Usage: /groupmsg GROUPNAME MESSAGE"),
    ("/groupmsg g1", "Error. Usage: /groupmsg GROUPNAME MESSAGE"),
    ("/p2pvideo", "Error. Usage: /p2pvideo USERNAME FILENAME"),
    ("/p2pvideo Luke", "Error. Usage: /p2pvideo USERNAME FILENAME"),
    ("/groupvideo g1", "Error. Usage: /groupvideo GROUPNAME FILENAME"),
    ("/logout now", "Error. Usage: /logout"),
    ("/help me", "Error. There is no command /me. Usage: /help [COMMAND]"),
    ("/help msgto now", "Error. Usage: /help [COMMAND]"),
    ("/quit now", "Error. Usage: /quit"),
    # anything else
    ("hello", "Error. Invalid command!"),
    ("/MSGTO Luke hi", "Error. Invalid command!"),
    ("/msg Luke hi", "Error. Invalid command!"),
    ("msgto Luke hi", "Error. Invalid command!"),
    ("/", "Error. Invalid command!"),
    # messages that cannot be sent
    ("/msgto Luke " + "x" * (MAX_TEXT + 1), "Error. The message is longer than 1000 characters."),
    ("/msgto Luke hi\x1b[2J", "Error. The message contains a control character (U+001B)."),
    ("/msgto Luke a\u2028b", "Error. The message contains an invisible or line-breaking character (U+2028)."),
    ("/msgto Luke a\u00a0b", "Error. The message contains a space other than the plain space (U+00A0)."),
    ("/msgto Luke a\u200d", "Error. The message contains an invisible or line-breaking character (U+200D)."),
    ("/groupmsg g1 tab\there", "Error. The message contains a control character (U+0009)."),
    ("/msgto Luke \u3000", "Error. The message is empty."),
    # names that cannot be anyone's
    ("/msgto " + "L" * 65 + " hi", f"Error. User {'L' * 65} does not exist."),
    ("/msgto 2 Luke L\x07 hi", "Error. User L\x07 does not exist."),
    ("/creategroup g1 Luke " + "L" * 65, f"Error. User {'L' * 65} does not exist."),
    ("/creategroup " + "g" * 65 + " Luke", "Error. Group name must be at most 64 characters."),
    ("/joingroup " + "g" * 65, f"Groupchat {'g' * 65} doesn't exist."),
    ("/groupmsg " + "g" * 65 + " hi", "The group chat does not exist."),
    ("/p2pvideo " + "L" * 65 + " f.mp4", f"Error. User {'L' * 65} does not exist."),
    # file names that cannot be saved by the audience
    ("/p2pvideo Luke a..b.mp4", "Error. Cannot send a..b.mp4: a file name must be printable, without '..' or '\\'."),
    ("/p2pvideo Luke videos/", "Error. Cannot send videos/: a file name must be printable, without '..' or '\\'."),
    ("/groupvideo g1 bad\x1bname", "Error. Cannot send bad\x1bname: a file name must be printable, without '..' or '\\'."),
])
def test_errors(line: str, error: str) -> None:
    assert parse(line) == Rejected(error)


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_blank_lines_are_nothing(line: str) -> None:
    assert parse(line) is None


def test_counted_form_takes_priority_over_a_numeric_username() -> None:
    # a whole number first always means N; a user named "7" is reached as /msgto 1 7 ...
    assert parse("/msgto 1 7 hi") == MsgTo(("7",), "hi", counted=True)
    assert parse("/msgto 7 hi") == Rejected(USAGE_MSGTO_N)
    assert parse("/msgto ٣ hi") == MsgTo(("٣",), "hi")  # only ASCII digits make a count


def test_a_file_is_named_by_its_basename() -> None:
    command = parse("/p2pvideo Luke ../videos/test.mp4")
    assert isinstance(command, P2PVideo) and command.filename == "test.mp4"


def test_help_lists_every_command_with_its_usage() -> None:
    lines = commands.help_lines()
    for word in ("/msgto", "/activeuser", "/creategroup", "/joingroup", "/groupmsg", "/p2pvideo",
                 "/groupvideo", "/logout", "/help"):
        assert any(line.startswith(word + " ") for line in lines), word
    assert any(line.startswith("/msgto N USER1 .. USERN MESSAGE ") for line in lines)


def test_prompt_line_is_the_spec_line_with_the_extensions_appended() -> None:
    spec = "Enter one of the following commands (/msgto, /activeuser, /creategroup, /joingroup, /groupmsg, /p2pvideo, /logout"
    assert commands.COMMAND_PROMPT.startswith(spec)


# --- properties --------------------------------------------------------------------------

words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
plain_words = st.text("abcLukeYoda019 ./", min_size=1, max_size=8)
lines = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda head, parts, spaces: head + spaces.join(parts),
        st.sampled_from(["/msgto ", "/msgto 2 ", "/msgto 1 ", "/activeuser", "/creategroup ", "/joingroup ",
                         "/groupmsg ", "/p2pvideo ", "/groupvideo ", "/logout", "/help", "/", ""]),
        st.lists(st.one_of(words, plain_words, st.sampled_from(["", "0", "3", " "])), max_size=6),
        st.sampled_from([" ", "  "]),
    ),
)


@given(lines)
def test_any_line_is_a_command_an_error_or_blank(line: str) -> None:
    result = parse(line)  # never raises
    if result is None:
        assert not line.strip()
    elif isinstance(result, Rejected):
        assert "\n" not in printable(result.error)
    else:
        assert parse(result.line()) == result  # re-renders to an equivalent line


@given(lines)
def test_extra_spaces_between_arguments_and_around_the_line_change_nothing(line: str) -> None:
    result = parse(line)
    if result is not None and not isinstance(result, Rejected):
        assert parse("  " + result.line().replace(" ", "   ", 1) + " ") == result
