"""Tab completion of the command line: command words, usernames and group names.

The names are what the server has told this client (``Names.observe``): users from
``/activeuser`` replies, messages, invitations and group creations; groups from the groups
this user created, was added to, joined or got a message in. Nothing extra is asked of the
server. ``candidates`` is pure: the words that may complete the word at the end of a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from . import commands
from .messages import (
    ActiveUsers, GroupCreated, GroupInvite, GroupJoined, GroupMessage, Message, PrivateMessage,
)


class Kind(Enum):
    COMMAND = auto()
    USER = auto()
    GROUP = auto()
    NOTHING = auto()  # message text, a new group's name, a file name


@dataclass
class Names:
    """Users and groups this client has heard of, in the order it first heard of them."""

    users: dict[str, None] = field(default_factory=dict)  # an ordered set
    groups: dict[str, None] = field(default_factory=dict)

    def observe(self, message: Message) -> None:
        match message:
            case ActiveUsers(users=entries):
                self.users.update(dict.fromkeys(entry.username for entry in entries))
            case PrivateMessage(sender=sender):
                self.users[sender] = None
            case GroupMessage(group=group, sender=sender):
                self.users[sender] = None
                self.groups[group] = None
            case GroupInvite(creator=creator, group=group):
                self.users[creator] = None
                self.groups[group] = None
            case GroupCreated(group=group, members=members):
                self.users.update(dict.fromkeys(members))
                self.groups[group] = None
            case GroupJoined(group=group):
                self.groups[group] = None


def _kind(words: list[str]) -> Kind:
    """What the next word of a line that starts with ``words`` (complete words) is."""
    if not words:
        return Kind.COMMAND
    command, position = commands.ALIASES.get(words[0], words[0]), len(words)
    if command == "/help":
        return Kind.COMMAND if position == 1 else Kind.NOTHING
    if command == "/msgto":
        if position == 1:
            return Kind.USER
        counted = words[1].isascii() and words[1].isdecimal()
        return Kind.USER if counted and position <= int(words[1][:6]) + 1 else Kind.NOTHING
    if command == "/creategroup":
        return Kind.USER if position >= 2 else Kind.NOTHING
    if command == "/p2pvideo":
        return Kind.USER if position == 1 else Kind.NOTHING
    if command in ("/joingroup", "/groupmsg", "/groupvideo"):
        return Kind.GROUP if position == 1 else Kind.NOTHING
    return Kind.NOTHING


def candidates(before: str, word: str, names: Names, me: str = "") -> list[str]:
    """The words that complete ``word``, typed after ``before`` (the line up to the word) by
    the user ``me`` (never offered as a receiver)."""
    kind = _kind(before.split())
    if kind is Kind.COMMAND:
        pool = list(commands.WORDS)
    elif kind is Kind.USER:
        pool = [user for user in names.users if user != me]
    elif kind is Kind.GROUP:
        pool = list(names.groups)
    else:
        return []
    return [name for name in pool if name.startswith(word)]
