"""What a client shows for each message from the server: the exact lines of SPEC §4–§5.

Also ``printable``, which every line goes through on its way to the terminal: the server
validates what it relays, but a client must not let a peer or a hostile server move the
cursor, clear the screen or retitle the window with escape sequences.
"""

from __future__ import annotations

from typing import Callable

from .fields import joins
from .messages import (
    ActiveUsers, Bye, Error, GroupCreated, GroupInvite, GroupJoined, GroupMessage, GroupSent,
    Message, MsgSent, PrivateMessage, Welcome,
)

WELCOME = "Welcome to TESSENGER!"
NO_OTHER_USER = "no other active user"


def printable(line: str) -> str:
    """``line`` with every non-printable character shown as its escape (``\\x1b``, ``\\u2028``),
    except zero-width joiners inside emoji (``core.fields.joins``)."""
    if line.isprintable():
        return line
    return "".join(
        c if c.isprintable() or joins(line, i) else c.encode("unicode_escape").decode("ascii")
        for i, c in enumerate(line)
    )


def bye(username: str) -> str:
    return f"Bye, {username}!"


def _active_users(message: ActiveUsers) -> list[str]:
    if not message.users:
        return [NO_OTHER_USER]
    return [f"{u.username}, {u.ip}, {u.udp_port}, active since {u.since}." for u in message.users]


_LINES: dict[type[Message], Callable[..., list[str]]] = {
    Welcome: lambda m: [WELCOME],
    Error: lambda m: [m.text],
    MsgSent: lambda m: [f"message sent at {m.timestamp}."],
    PrivateMessage: lambda m: [f"{m.timestamp}, {m.sender}: {m.text}"],
    ActiveUsers: _active_users,
    GroupCreated: lambda m: [
        f"Group chat room has been created, room name: {m.group}, users in this room: {' '.join(m.members)}"
    ],
    GroupInvite: lambda m: [f"{m.creator} added you to group chat {m.group}. Use /joingroup {m.group} to join."],
    GroupJoined: lambda m: [f"Joined the group chat: {m.group} successfully."],
    GroupSent: lambda m: ["Group chat message sent."],
    GroupMessage: lambda m: [f"{m.timestamp}, {m.group}, {m.sender}: {m.text}"],
    Bye: lambda m: [bye(m.username)],
}


def lines(message: Message) -> list[str]:
    """The lines that show ``message``; [] for messages shown by their handler instead
    (``UserOk`` asks for the password; transfers are the transfer engine's to report)."""
    render = _LINES.get(type(message))
    return render(message) if render else []
