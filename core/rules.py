"""The chat rules: accounts, login and lockout, presence, private and group messages.

``Chat`` is a state machine driven by ``(connection, request, now)``. It performs no I/O:
each call returns the effects the shell must carry out, in order. The shell writes every
``Append`` before it delivers any ``Send`` of the same turn, which is how "logged before
acknowledged" holds without the rules knowing about files.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from . import logformat, passwords
from .logformat import MESSAGELOG, message_line
from .login_throttle import LoginThrottle
from .messages import (
    ActiveUser, Code, ActiveUserEntry, ActiveUsers, Bye, CheckUser, CreateGroup, Error, GroupCreated,
    GroupInvite, GroupJoined, GroupMessage, GroupMsg, GroupSent, GroupVideo, JoinGroup, Login,
    Logout, Message, MsgSent, MsgTo, P2PVideo, PrivateMessage, Request, TransferEnded, TransferOffer,
    TransferReady, TransferTarget, UserOk, Welcome, valid_name, valid_password,
)
from .userlog import UserLog

ConnId = int
DEFAULT_BLOCK_SECONDS = 10.0
DEFAULT_MAX_GROUPS_PER_USER = 100
DEFAULT_MAX_GROUPS = 10_000


# --- effects -----------------------------------------------------------------------------
# Values, never changed once made; not ``frozen`` only because that makes construction three
# times slower, and the relay makes four effects per message.

@dataclass(slots=True)
class Send:
    """Deliver one message to each of ``conns`` (encoded once, however many they are)."""

    conns: tuple[ConnId, ...]
    message: Message


@dataclass(slots=True)
class Append:
    """Append ``line`` (newline included) to the log file ``log``; "" only creates it."""

    log: str
    line: str


@dataclass(slots=True)
class Announce:
    """A line for the server's own console."""

    line: str


@dataclass(slots=True)
class Close:
    """Close the connection once its pending output is written."""

    conn: ConnId


@dataclass(slots=True)
class Hold:
    """The request was not handled yet: read and handle nothing more from ``conn`` before
    ``until``, then call ``Chat.resume`` (which may answer with another ``Hold``)."""

    conn: ConnId
    until: float


Effect = Union[Send, Append, Announce, Close, Hold]


# --- state -------------------------------------------------------------------------------

@dataclass(slots=True)
class Session:
    conn: ConnId
    ip: str
    username: str | None = None
    udp_port: int = 0
    since: str = ""
    held: Login | None = None  # a login waiting for its address's turn (see Hold)
    # The latest transfers this user takes part in (id -> the other side's connection), so
    # the other side hears at once when this user leaves; oldest forgotten beyond a bound.
    transfers: dict[str, ConnId] = field(default_factory=dict)


@dataclass(slots=True)
class Group:
    creator: str
    members: list[str]  # in the order they were named, creator first
    joined: set[str]
    messages: int  # the last number in the group's log


def parse_credentials(text: str) -> dict[str, str]:
    """Accounts from ``credentials.txt``: ``USERNAME PASSWORD`` a line, blank lines ignored.

    A byte order mark at the start (as some editors write) is no part of the first name.
    Raises ValueError naming the first malformed line, or a username's second line: which
    password was meant is not for the server to guess.
    """
    accounts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"line {number} is not 'USERNAME PASSWORD'")
        username, password = parts
        if username in accounts:
            raise ValueError(f"line {number} repeats the username {_shown(username)} of line {lines[username]}")
        accounts[username] = password
        lines[username] = number
    return accounts


def _shown(name: str) -> str:
    """``name`` as it may be printed: escaped (in quotes) when it holds what a terminal acts on."""
    return name if name.isprintable() else ascii(name)


def unusable_accounts(accounts: dict[str, str]) -> list[str]:
    """One line for each account no client could ever log in to: its username or its
    password is no name or password the protocol carries (a control or invisible character,
    or too long). The password itself is never shown."""
    problems = []
    for username, password in accounts.items():
        if not valid_name(username):
            problems.append(f"the username {_shown(username)} cannot be typed (control or invisible characters, "
                            "or too long); that account can never log in")
        elif not valid_password(password):
            problems.append(f"the password of {username} cannot be typed (control or invisible characters, "
                            "or too long); that account can never log in")
    return problems


MAX_REMEMBERED_TRANSFERS = 64  # per user (bounded memory): one older than its 64 successors is over


def _remember_transfer(session: Session, transfer_id: str, other: ConnId) -> None:
    transfers = session.transfers
    transfers[transfer_id] = other
    if len(transfers) > MAX_REMEMBERED_TRANSFERS:
        del transfers[next(iter(transfers))]


def _error(conn: ConnId, text: str, code: str = Code.COMMAND) -> Send:
    return Send((conn,), Error(code, text))


class Chat:
    """All chat state of one server."""

    def __init__(
        self,
        accounts: dict[str, str],
        max_failures: int,
        *,
        block_seconds: float = DEFAULT_BLOCK_SECONDS,
        history: dict[str, int] | None = None,
        new_transfer_id: Callable[[], str] = lambda: secrets.token_hex(16),
        new_transfer_key: Callable[[], str] = lambda: secrets.token_hex(32),
        login_throttle: LoginThrottle | None = None,
        max_groups_per_user: int = DEFAULT_MAX_GROUPS_PER_USER,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ) -> None:
        """``history`` maps each existing log file name to its last message number."""
        self.accounts = accounts
        self.max_failures = max_failures
        self.block_seconds = block_seconds
        self.login_throttle = login_throttle if login_throttle is not None else LoginThrottle()
        self.max_groups_per_user = max_groups_per_user
        self.max_groups = max_groups
        self.groups_created: dict[str, int] = {}  # creator -> groups created
        self._history = dict(history or {})
        self.messages = self._history.get(logformat.MESSAGELOG, 0)
        self._new_transfer_id = new_transfer_id
        self._new_transfer_key = new_transfer_key
        self.sessions: dict[ConnId, Session] = {}
        self.active: dict[str, Session] = {}  # insertion order is login order
        self.failures: dict[str, int] = {}
        self.blocked_until: dict[str, float] = {}
        self.groups: dict[str, Group] = {}
        self.clock = logformat.Clock()
        self.presence_version = 0  # bumps whenever ``active`` changes
        self._userlog = UserLog()  # userlog.txt's lines, in step with ``active``

    # --- connections ---------------------------------------------------------------------

    def connect(self, conn: ConnId, ip: str) -> None:
        self.sessions[conn] = Session(conn, ip)

    def disconnect(self, conn: ConnId, now: float) -> list[Effect]:
        """The connection is gone, however it went: a logged-in user is logged out."""
        session = self.sessions.pop(conn, None)
        if session is None or session.username is None:
            return []
        del self.active[session.username]
        self._userlog.remove(session.username)
        self.presence_version += 1
        return [*self._end_transfers(session), Announce(f"{session.username} logout")]

    def handle(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """The effects of one request: never none, and a ``Close`` only ever as the last."""
        session = self.sessions[conn]
        if session.username is None:
            if isinstance(request, CheckUser):
                return self._check_user(session, request, now)
            if isinstance(request, Login):
                return self._login(session, request, now)
            return self._protocol_error(conn, "Error. Please log in first.")
        handler = self._COMMANDS.get(type(request))
        if handler is None:
            return self._protocol_error(conn, "Error. You are already logged in.")
        return handler(self, session, request, now)

    def _protocol_error(self, conn: ConnId, text: str) -> list[Effect]:
        return [_error(conn, text, Code.PROTOCOL), Close(conn)]

    # --- login ---------------------------------------------------------------------------
    # Nothing about an account is told before a password is given, but that its name is
    # unknown: "blocked" answers a login with any password during the block, and "already
    # logged in" one with the right password (a wrong one is a failure like any other).

    def is_blocked(self, username: str, now: float) -> bool:
        return now < self.blocked_until.get(username, 0.0)

    def _invalid_username(self, conn: ConnId) -> list[Effect]:
        return [_error(conn, "Invalid Username. Please try again", Code.INVALID_USERNAME)]

    def _check_user(self, session: Session, request: CheckUser, now: float) -> list[Effect]:
        if request.username not in self.accounts:
            return self._invalid_username(session.conn)
        return [Send((session.conn,), UserOk())]

    def resume(self, conn: ConnId, now: float) -> list[Effect]:
        """Handle the login a ``Hold`` put off, once its time has come."""
        session = self.sessions.get(conn)
        if session is None or session.held is None:
            return []
        request, session.held = session.held, None
        return self._login(session, request, now)

    def _login(self, session: Session, request: Login, now: float) -> list[Effect]:
        username = request.username
        conn = session.conn
        if username not in self.accounts:
            return self._invalid_username(conn)
        wait = self.login_throttle.wait_until(session.ip, now)
        if wait is not None:  # its address failed too often of late: this one waits its turn
            session.held = request
            return [Hold(conn, wait)]
        if self.is_blocked(username, now):  # whatever the password; and not counted
            text = "Your account is blocked due to multiple login failures. Please try again later"
            return [_error(conn, text, Code.BLOCKED), Close(conn)]
        # a plain password or a scrypt hash entry, compared in constant time either way
        if not passwords.verify(request.password, self.accounts[username]):
            self.login_throttle.failed(session.ip, now)
            return self._failed_password(session, username, now)
        if username in self.active:
            return [_error(conn, f"{username} is already logged in", Code.ALREADY_LOGGED_IN)]
        self.failures.pop(username, None)
        timestamp = self.clock.timestamp(now)
        session.username = username
        session.udp_port = request.udp_port
        session.since = timestamp
        self.active[username] = session
        self._userlog.add(username, logformat.userlog_entry(timestamp, username, session.ip, request.udp_port))
        self.presence_version += 1
        return [
            Send((session.conn,), Welcome(username)),
            Announce(f"{username} login from {session.ip} (UDP port {request.udp_port}) at {timestamp}."),
        ]

    def _failed_password(self, session: Session, username: str, now: float) -> list[Effect]:
        failures = self.failures.get(username, 0) + 1
        if failures < self.max_failures:
            self.failures[username] = failures
            return [_error(session.conn, "Invalid Password. Please try again", Code.INVALID_PASSWORD)]
        self.failures.pop(username, None)  # the block starts a fresh count when it ends
        self.blocked_until[username] = now + self.block_seconds
        return [
            _error(session.conn, "Invalid Password. Your account has been blocked. Please try again later", Code.BLOCKED),
            Announce(f"{username} blocked for {self.block_seconds:g} seconds after {failures} failed logins."),
            Close(session.conn),
        ]

    # --- commands ------------------------------------------------------------------------

    def _user_problem(self, username: str, offline: str) -> str | None:
        """The error line for a receiver that does not exist or is not logged in."""
        if username not in self.accounts:
            return f"Error. User {username} does not exist."
        if username not in self.active:
            return offline.format(username)
        return None

    def _msgto(self, session: Session, request: MsgTo, now: float) -> list[Effect]:
        if not request.receivers:
            return [_error(session.conn, "Error. Usage: /msgto USERNAME MESSAGE")]
        sender = session.username
        to_sender = (session.conn,)
        text = request.text
        timestamp = self.clock.timestamp(now)
        effects: list[Effect] = []
        for receiver in dict.fromkeys(request.receivers):  # each receiver once, in order
            target = self.active.get(receiver)
            if target is None:
                effects.append(_error(session.conn, self._user_problem(receiver, "Error. {} is not active.")))
                continue
            self.messages += 1
            effects += (
                Append(MESSAGELOG, message_line(self.messages, timestamp, receiver, text)),
                Send((target.conn,), PrivateMessage(sender, text, timestamp)),
                Send(to_sender, MsgSent(receiver, timestamp)),
                Announce(f'{sender} message to {receiver} "{text}" at {timestamp}.'),
            )
        return effects

    def _activeuser(self, session: Session, request: ActiveUser, now: float) -> list[Effect]:
        others = [
            ActiveUserEntry(s.username, s.ip, s.udp_port, s.since)
            for s in self.active.values()
            if s is not session
        ]
        return [Send((session.conn,), ActiveUsers(others)), Announce(f"{session.username} issued /activeuser")]

    def _creategroup(self, session: Session, request: CreateGroup, now: float) -> list[Effect]:
        creator = session.username
        group = request.group
        invited = [m for m in dict.fromkeys(request.members) if m != creator]
        if not invited:
            return [_error(session.conn, "Please enter at least one more active users.")]
        if not (group.isascii() and group.isalnum()):
            return [_error(session.conn, "Error. Group name must contain only letters and digits.")]
        if group in self.groups:
            return [_error(session.conn, f"Failed to create the group chat {group}: group name exists!")]
        quota = self._group_quota(creator)
        if quota:
            return [_error(session.conn, f"Failed to create the group chat {group}: {quota}.")]
        for member in invited:
            problem = self._user_problem(member, "Error. {} is not active.")
            if problem:
                return [_error(session.conn, problem)]
        log = logformat.group_log_name(group)
        members = [creator, *invited]
        self.groups[group] = Group(creator, members, {creator}, self._history.get(log, 0))
        self.groups_created[creator] = self.groups_created.get(creator, 0) + 1
        return [
            Append(log, ""),
            Send((session.conn,), GroupCreated(group, members)),
            Send(tuple(self.active[m].conn for m in invited), GroupInvite(group, creator)),
            Announce(f"{creator} created group chat {group} with {' '.join(invited)}."),
        ]

    def _group_quota(self, creator: str) -> str | None:
        """Why ``creator`` may create no more groups, if so: groups live in memory and each has
        a log file, so neither one user nor all together may make them without end."""
        if self.groups_created.get(creator, 0) >= self.max_groups_per_user:
            return f"you have created {self.max_groups_per_user} groups, the most one user may"
        if len(self.groups) >= self.max_groups:
            return f"the server holds {self.max_groups} groups, the most it may"
        return None

    def _joingroup(self, session: Session, request: JoinGroup, now: float) -> list[Effect]:
        username = session.username
        group = self.groups.get(request.group)
        if group is None:
            return [_error(session.conn, f"Groupchat {request.group} doesn't exist.")]
        if username in group.joined:
            return [_error(session.conn, f"You have already joined Groupchat {request.group}")]
        if username not in group.members:
            return [_error(session.conn, f"Error. You were not added to Groupchat {request.group}.")]
        group.joined.add(username)
        return [
            Send((session.conn,), GroupJoined(request.group)),
            Announce(f"{username} joined group chat {request.group}."),
        ]

    def _joined_group(self, session: Session, name: str) -> Group | str:
        """The group ``name`` if the session's user may post to it, else the error line."""
        group = self.groups.get(name)
        if group is None:
            return "The group chat does not exist."
        if session.username not in group.members:
            return "You are not in this group chat."
        if session.username not in group.joined:
            return "Please join the group before sending messages."
        return group

    def _audience(self, group: Group, sender: str) -> list[Session]:
        """Every other joined member who is online now."""
        return [self.active[m] for m in group.members if m != sender and m in group.joined and m in self.active]

    def _groupmsg(self, session: Session, request: GroupMsg, now: float) -> list[Effect]:
        group = self._joined_group(session, request.group)
        if isinstance(group, str):
            return [_error(session.conn, group)]
        sender = session.username
        timestamp = self.clock.timestamp(now)
        group.messages += 1
        line = logformat.message_line(group.messages, timestamp, sender, request.text)
        audience = tuple(s.conn for s in self._audience(group, sender))
        return [
            Append(logformat.group_log_name(request.group), line),
            Send(audience, GroupMessage(request.group, sender, request.text, timestamp)),
            Send((session.conn,), GroupSent(request.group)),
            Announce(f'{sender} issued a message in group chat {request.group}: "{request.text}" at {timestamp}.'),
        ]

    def _logout(self, session: Session, request: Logout, now: float) -> list[Effect]:
        # the logout itself happens in disconnect(), the one path for every way of leaving
        return [Send((session.conn,), Bye(session.username)), Close(session.conn)]

    # --- peer-to-peer transfer set-up ----------------------------------------------------

    def _offer(self, presenter: Session, audience: Iterable[Session], filename: str, size: int) -> list[Effect]:
        effects: list[Effect] = []
        targets = []
        for member in audience:
            transfer_id = self._new_transfer_id()
            key = self._new_transfer_key()  # fresh per transfer: another's datagrams never verify
            targets.append(TransferTarget(member.username, member.ip, member.udp_port, transfer_id, key))
            offer = TransferOffer(presenter.username, filename, size, presenter.ip, presenter.udp_port,
                                  transfer_id, key)
            effects.append(Send((member.conn,), offer))
            _remember_transfer(presenter, transfer_id, member.conn)
            _remember_transfer(member, transfer_id, presenter.conn)
            effects.append(Announce(f"{presenter.username} is sending {filename} ({size} bytes) to {member.username}."))
        effects.insert(0, Send((presenter.conn,), TransferReady(filename, targets)))
        return effects

    def _p2pvideo(self, session: Session, request: P2PVideo, now: float) -> list[Effect]:
        if request.audience == session.username:
            return [_error(session.conn, "Error. You cannot send a file to yourself.")]
        problem = self._user_problem(request.audience, "{} is offline")
        if problem:
            return [_error(session.conn, problem)]
        return self._offer(session, [self.active[request.audience]], request.filename, request.size)

    def _groupvideo(self, session: Session, request: GroupVideo, now: float) -> list[Effect]:
        group = self._joined_group(session, request.group)
        if isinstance(group, str):
            return [_error(session.conn, group)]
        return self._offer(session, self._audience(group, session.username), request.filename, request.size)

    def _end_transfers(self, session: Session) -> list[Effect]:
        """``session`` is leaving: tell the other side of each of its recent transfers."""
        effects: list[Effect] = []
        for transfer_id, other_conn in session.transfers.items():
            other = self.sessions.get(other_conn)
            if other is not None and other.transfers.pop(transfer_id, None) is not None:
                effects.append(Send((other_conn,), TransferEnded(transfer_id, session.username)))
        session.transfers.clear()
        return effects

    # --- presence ------------------------------------------------------------------------

    def userlog(self) -> memoryview:
        """The bytes of ``userlog.txt`` for the users active now, valid until the next login or
        logout (from the kept lines: the shell rewrites the file at most a few times a second,
        however many log in or out)."""
        return self._userlog.text()

    def unstored(self, log: str, lines: list[str]) -> None:
        """The shell could not store ``lines``, the last ones given for ``log``: their requests
        were refused, never acknowledged, so their numbers are given out again, and a group
        whose log could not even be created was not created."""
        numbered = sum(1 for line in lines if line)
        if log == logformat.MESSAGELOG:
            self.messages -= numbered
            return
        name = logformat.group_of_log(log)
        group = self.groups.get(name) if name is not None else None
        if group is None:
            return
        if "" in lines:  # its creation was among them: it never was, and counts for no quota
            del self.groups[name]
            self.groups_created[group.creator] -= 1
        else:
            group.messages -= numbered

    def address_of(self, username: str) -> tuple[str, int] | None:
        """The (IP, UDP port) of an active user, for a peer-to-peer transfer."""
        session = self.active.get(username)
        return (session.ip, session.udp_port) if session else None

    _COMMANDS: dict[type, Callable[..., list[Effect]]] = {
        MsgTo: _msgto,
        ActiveUser: _activeuser,
        CreateGroup: _creategroup,
        JoinGroup: _joingroup,
        GroupMsg: _groupmsg,
        Logout: _logout,
        P2PVideo: _p2pvideo,
        GroupVideo: _groupvideo,
    }
