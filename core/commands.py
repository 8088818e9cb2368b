"""The command line a user types, parsed into a command or the one-line error to show.

Grammar (SPEC §5): a command word, then arguments separated by runs of spaces. The last
argument of ``/msgto``, ``/groupmsg``, ``/p2pvideo`` and ``/groupvideo`` is the rest of the
line, so a message keeps its inner spacing and a file name may contain spaces. Spaces around
the whole line are ignored. Every field of a parsed command is valid on the wire (see
``core.messages``), so a client never sends a request the server must reject as malformed;
the server still checks everything.

``parse`` is pure. Each command renders back to a canonical line with ``line()`` that parses
to the same command.
"""

from __future__ import annotations

import os.path
from dataclasses import dataclass
from typing import Callable, Union

from .messages import MAX_LIST, MAX_NAME, valid_filename, valid_name, valid_text

INVALID_COMMAND = "Error. Invalid command!"

# (usage, what it does) for each command, in the order the prompt line and /help list them.
HELP: tuple[tuple[str, str], ...] = (
    ("/msgto USERNAME MESSAGE", "send a private message"),
    ("/msgto N USER1 .. USERN MESSAGE", "send one private message to N users"),
    ("/activeuser", "list the other active users"),
    ("/creategroup GROUPNAME USER1 [USER2 ...]", "create a group chat and add users to it"),
    ("/joingroup GROUPNAME", "join a group chat you were added to"),
    ("/groupmsg GROUPNAME MESSAGE", "send a message to a group chat you joined"),
    ("/p2pvideo USERNAME FILENAME", "send a file to a user, peer to peer over UDP"),
    ("/groupvideo GROUPNAME FILENAME", "send a file to every joined, active member of a group"),
    ("/logout", "log out and quit (Ctrl-D and Ctrl-C do the same)"),
    ("/quit", "the same as /logout"),
    ("/exit", "the same as /logout"),
    ("/help [COMMAND]", "show this list, or how to use one command"),
)
# the usage of each command word; /msgto's plain form is the one its usage error names
USAGE: dict[str, str] = {usage.split(" ", 1)[0]: usage for usage, _ in reversed(HELP)}
MSGTO_COUNTED_USAGE = HELP[1][0]
ALIASES = {"/quit": "/logout", "/exit": "/logout"}  # other words for a command
WORDS = tuple(dict.fromkeys(usage.split(" ", 1)[0] for usage, _ in HELP))  # in /help's order

COMMAND_PROMPT = (
    "Enter one of the following commands (/msgto, /activeuser, /creategroup, /joingroup, "
    "/groupmsg, /p2pvideo, /logout, /groupvideo, /help):"
)


def help_lines(word: str | None = None) -> list[str]:
    """Every command with its usage, or only those of the command ``word``."""
    width = max(len(usage) for usage, _ in HELP)
    return [f"{usage.ljust(width)}  {what}" for usage, what in HELP if word in (None, usage.split(" ", 1)[0])]


# --- commands ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MsgTo:
    receivers: tuple[str, ...]
    text: str
    counted: bool = False  # typed as ``/msgto N USER1 .. USERN MESSAGE``

    def line(self) -> str:
        if self.counted:
            return f"/msgto {len(self.receivers)} {' '.join(self.receivers)} {self.text}"
        return f"/msgto {self.receivers[0]} {self.text}"


@dataclass(frozen=True, slots=True)
class ActiveUser:
    def line(self) -> str:
        return "/activeuser"


@dataclass(frozen=True, slots=True)
class CreateGroup:
    group: str
    members: tuple[str, ...]

    def line(self) -> str:
        return f"/creategroup {self.group} {' '.join(self.members)}"


@dataclass(frozen=True, slots=True)
class JoinGroup:
    group: str

    def line(self) -> str:
        return f"/joingroup {self.group}"


@dataclass(frozen=True, slots=True)
class GroupMsg:
    group: str
    text: str

    def line(self) -> str:
        return f"/groupmsg {self.group} {self.text}"


@dataclass(frozen=True, slots=True)
class P2PVideo:
    audience: str
    path: str  # as typed: relative to the client's working directory

    @property
    def filename(self) -> str:
        """The name the audience is told (the basename)."""
        return os.path.basename(self.path)

    def line(self) -> str:
        return f"/p2pvideo {self.audience} {self.path}"


@dataclass(frozen=True, slots=True)
class GroupVideo:
    group: str
    path: str

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    def line(self) -> str:
        return f"/groupvideo {self.group} {self.path}"


@dataclass(frozen=True, slots=True)
class Logout:
    def line(self) -> str:
        return "/logout"


@dataclass(frozen=True, slots=True)
class Help:
    command: str | None = None  # a command word, with its "/"

    def line(self) -> str:
        return f"/help {self.command}" if self.command else "/help"


Command = Union[MsgTo, ActiveUser, CreateGroup, JoinGroup, GroupMsg, P2PVideo, GroupVideo, Logout, Help]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The line is not a command that can be sent; ``error`` is the line to show."""

    error: str


# --- parsing -----------------------------------------------------------------------------

def parse(line: str) -> Command | Rejected | None:
    """The command on ``line``, the error to show, or None for a blank line."""
    if not line.strip():
        return None
    words, rest = _split(line, 1)
    parser = _PARSERS.get(words[0])
    if parser is None:
        return Rejected(INVALID_COMMAND)
    return parser(rest)


def _split(text: str, count: int) -> tuple[list[str], str]:
    """Up to ``count`` space-separated words, then the rest without its surrounding spaces."""
    words: list[str] = []
    rest = text.strip(" ")
    while len(words) < count and rest:
        word, _, rest = rest.partition(" ")
        words.append(word)
        rest = rest.lstrip(" ")
    return words, rest


def _words(text: str) -> list[str]:
    """All the space-separated words of ``text``."""
    return [word for word in text.split(" ") if word]


def _usage(usage: str) -> Rejected:
    return Rejected(f"Error. Usage: {usage}")


def _problem(*checks: str | None) -> Rejected | None:
    """The first failed check (an error line), if any."""
    for error in checks:
        if error is not None:
            return Rejected(error)
    return None


# Field checks return the error line for a bad field, or None. A name that cannot travel
# on the wire cannot belong to any user or group, so it gets the server's "no such" line.

def _user(name: str) -> str | None:
    return None if valid_name(name) else f"Error. User {name} does not exist."


def _users(names: list[str] | tuple[str, ...]) -> str | None:
    if len(names) > MAX_LIST:
        return f"Error. At most {MAX_LIST} users can be named in one command."
    return next((error for error in map(_user, names) if error), None)


def _text(text: str) -> str | None:
    problem = valid_text(text)
    return None if problem is None else f"Error. The {problem}."


def _group(name: str, missing: str) -> str | None:
    return None if valid_name(name) else missing.format(name)


def _file(path: str) -> str | None:
    if valid_filename(os.path.basename(path)):
        return None
    return f"Error. Cannot send {path}: a file name must be printable, without '..' or '\\'."


def _parse_msgto(rest: str) -> MsgTo | Rejected:
    words, text = _split(rest, 1)
    if words and words[0].isascii() and words[0].isdecimal():
        return _parse_msgto_counted(rest)
    if not words or not text:
        return _usage(USAGE["/msgto"])
    return _problem(_user(words[0]), _text(text)) or MsgTo((words[0],), text)


def _parse_msgto_counted(rest: str) -> MsgTo | Rejected:
    """``/msgto N USER1 .. USERN MESSAGE``: a whole number first always means this form."""
    (number,), rest = _split(rest, 1)
    # the number can only be as long as the line has words; cap the digits before int()
    count = int(number) if len(number) <= 6 else MAX_LIST + 1
    receivers, text = _split(rest, count)
    if count == 0 or len(receivers) < count or not text:
        return _usage(MSGTO_COUNTED_USAGE)
    return _problem(_users(receivers), _text(text)) or MsgTo(tuple(receivers), text, counted=True)


def _parse_activeuser(rest: str) -> ActiveUser | Rejected:
    return _usage(USAGE["/activeuser"]) if rest else ActiveUser()


def _parse_creategroup(rest: str) -> CreateGroup | Rejected:
    words = _words(rest)
    if not words:
        return _usage(USAGE["/creategroup"])
    group, members = words[0], tuple(words[1:])
    if not members:
        return Rejected("Please enter at least one more active users.")
    if not (group.isascii() and group.isalnum()):
        return Rejected("Error. Group name must contain only letters and digits.")
    if len(group) > MAX_NAME:
        return Rejected(f"Error. Group name must be at most {MAX_NAME} characters.")
    return _problem(_users(members)) or CreateGroup(group, members)


def _parse_joingroup(rest: str) -> JoinGroup | Rejected:
    words = _words(rest)
    if len(words) != 1:
        return _usage(USAGE["/joingroup"])
    return _problem(_group(words[0], "Groupchat {} doesn't exist.")) or JoinGroup(words[0])


def _parse_groupmsg(rest: str) -> GroupMsg | Rejected:
    words, text = _split(rest, 1)
    if not words or not text:
        return _usage(USAGE["/groupmsg"])
    return _problem(_group(words[0], "The group chat does not exist."), _text(text)) or GroupMsg(words[0], text)


def _parse_p2pvideo(rest: str) -> P2PVideo | Rejected:
    words, path = _split(rest, 1)
    if not words or not path:
        return _usage(USAGE["/p2pvideo"])
    return _problem(_user(words[0]), _file(path)) or P2PVideo(words[0], path)


def _parse_groupvideo(rest: str) -> GroupVideo | Rejected:
    words, path = _split(rest, 1)
    if not words or not path:
        return _usage(USAGE["/groupvideo"])
    return _problem(_group(words[0], "The group chat does not exist."), _file(path)) or GroupVideo(words[0], path)


def _parse_logout(rest: str, word: str = "/logout") -> Logout | Rejected:
    return _usage(USAGE[word]) if rest else Logout()


def _parse_help(rest: str) -> Help | Rejected:
    words = _words(rest)
    if not words:
        return Help()
    word = "/" + words[0].removeprefix("/")  # "/help msgto" is "/help /msgto"
    if len(words) > 1:
        return _usage(USAGE["/help"])
    if word not in USAGE:
        return Rejected(f"Error. There is no command {word}. Usage: {USAGE['/help']}")
    return Help(word)


_PARSERS: dict[str, Callable[[str], Command | Rejected]] = {
    "/msgto": _parse_msgto,
    "/activeuser": _parse_activeuser,
    "/creategroup": _parse_creategroup,
    "/joingroup": _parse_joingroup,
    "/groupmsg": _parse_groupmsg,
    "/p2pvideo": _parse_p2pvideo,
    "/groupvideo": _parse_groupvideo,
    "/logout": _parse_logout,
    "/quit": lambda rest: _parse_logout(rest, "/quit"),
    "/exit": lambda rest: _parse_logout(rest, "/exit"),
    "/help": _parse_help,
}
