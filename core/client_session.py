"""The client's behaviour as a state machine without I/O: login, commands, replies, pushes.

``ClientSession`` is driven by events — a line the user typed, the end of input, Ctrl-C, a
message from the server, the connection's loss, the passing of time — and answers each with
a list of effects for the shell (``client.py``) to carry out in order: frames to send, lines
to print, a prompt to show, transfers to start, the exit code. Tests drive it without a
terminal or a socket.

Commands run one at a time: after a request is sent, lines the user types are queued until
every reply to it has arrived (one per distinct receiver for ``/msgto``, one otherwise), while
pushes are shown as they come. After each command's result the command prompt is asked again.

File transfers happen outside: on ``transfer_ready`` and ``transfer_offer`` the session emits
``Upload`` and ``Download`` and the shell hands them to a ``Transfers`` engine, which also
owns the UDP datagrams and its timers (see ``Transfers`` below).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import Callable, Protocol, Sequence, Union

from . import commands, render
from .reconnect import Backoff
from .framing import DEFAULT_MAX_FRAME
from .messages import (
    ActiveUser, Bye, CheckUser, Code, CreateGroup, Error, GroupInvite, GroupMessage, GroupMsg,
    GroupVideo, JoinGroup, Login, Logout, Message, MsgTo, P2PVideo, PrivateMessage, Request,
    SchemaError, TransferEnded, TransferOffer, TransferReady, UserOk, Welcome, encode, requests, valid_name,
)

LOGOUT_WAIT = 2.0  # seconds to wait for the server's ``bye`` before leaving anyway
LOGIN_CANCELLED = "Login cancelled."
CONNECTION_LOST = "Connection to the server was lost."
RECONNECTING = "Connection to the server was lost. Reconnecting... (Ctrl-C to give up)"
RECONNECTED = "Reconnected."
NOT_CONNECTED = "Error. Not connected to the server: reconnecting... (Ctrl-C to give up)"
GAVE_UP = "Gave up reconnecting."
INVALID_USERNAME = "Invalid Username. Please try again"
INVALID_PASSWORD = "Invalid Password. Please try again"

Address = tuple[str, int]


class Prompt(Enum):
    """What the session waits for the user to type; the value is the prompt text."""

    USERNAME = "Username: "
    PASSWORD = "Password: "  # never echoed on a terminal
    COMMAND = commands.COMMAND_PROMPT + " "


# --- effects -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the server."""

    message: Request


@dataclass(frozen=True, slots=True)
class Print:
    """Show one line (the shell makes it printable first)."""

    line: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask the user for the next line with ``prompt``."""

    prompt: Prompt


@dataclass(frozen=True, slots=True)
class Exit:
    """Stop the client with this exit status."""

    code: int


@dataclass(frozen=True, slots=True)
class Upload:
    """The server set up a transfer: send the file at ``path`` (``size`` bytes, as announced
    to the server) to each of ``ready.targets``; ``group`` is set for ``/groupvideo``."""

    path: str
    ready: TransferReady
    size: int
    group: str | None = None
    cancelled: bool = False  # the user left before the reply came: tell each audience (ABORT)


@dataclass(frozen=True, slots=True)
class Download:
    """The server announced a file coming to us."""

    offer: TransferOffer


@dataclass(frozen=True, slots=True)
class Ended:
    """The server says the other side of a transfer left: stop it now."""

    ended: TransferEnded


@dataclass(frozen=True, slots=True)
class Datagrams:
    """Send these UDP datagrams to ``address``, in order (a transfer engine's effect)."""

    datagrams: Sequence[bytes]
    address: Address


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new connection to the server, then call ``connected`` or ``connect_failed``."""


@dataclass(frozen=True, slots=True)
class Status:
    """Show ``text`` as the progress line on a terminal, redrawn in place; None removes it."""

    text: str | None


Effect = Union[Send, Print, Ask, Exit, Upload, Download, Ended, Datagrams, Status, Connect]


class Transfers(Protocol):
    """The seam for the peer-to-peer engine (``core.transfers.TransferEngine``): the shell
    drives it with these calls only.

    It receives every datagram that reaches the client's UDP socket, is ticked on every turn
    of the loop and whenever its ``deadline`` (a ``time.monotonic`` value; one already past
    means "more to send now") passes, and answers with effects (``Datagrams`` to send,
    ``Print`` to show, ``Status`` for the progress line).
    """

    def upload(self, request: Upload, now: float) -> list[Effect]: ...

    def download(self, offer: TransferOffer, now: float) -> list[Effect]: ...

    def ended(self, message: TransferEnded, now: float) -> list[Effect]: ...

    def datagram(self, data: bytes, address: Address, now: float) -> list[Effect]: ...

    def tick(self, now: float) -> list[Effect]: ...

    def deadline(self) -> float | None: ...

    def close(self, now: float, reason: str) -> list[Effect]:
        """The client is leaving: abort every transfer (the peers are told ``reason``) and
        leave no partial file behind."""
        ...


# --- the session -------------------------------------------------------------------------

class State(Enum):
    USERNAME = auto()  # waiting for the user to type a username
    CHECKING = auto()  # check_user sent, waiting for the reply
    PASSWORD = auto()  # waiting for the password
    LOGGING_IN = auto()  # login sent
    READY = auto()  # logged in, waiting for a command
    BUSY = auto()  # a command's request sent, waiting for its replies
    LEAVING = auto()  # logout sent, waiting for bye
    RECONNECTING = auto()  # the connection was lost: waiting to try again, or connecting
    DONE = auto()  # Exit emitted; nothing more happens


_PROMPTS = {
    State.USERNAME: Prompt.USERNAME, State.PASSWORD: Prompt.PASSWORD, State.READY: Prompt.COMMAND,
    State.RECONNECTING: Prompt.COMMAND,  # what is typed gets an error (or /help, /logout)
}
_PUSHES = (PrivateMessage, GroupMessage, GroupInvite, TransferOffer, TransferEnded)


class ClientSession:
    """One user's session. ``file_size(path)`` is the size of the file a user wants to send,
    raising OSError (FileNotFoundError when there is none) when it cannot be sent.

    With ``reconnect``, a logged-in session whose connection is lost waits (``Backoff``),
    asks the shell to ``Connect`` again, and logs in again with the username and password
    it holds, through the same check_user and login steps as the user; any refusal then
    ends the client with the server's line, whichever step it comes at.
    """

    def __init__(
        self,
        udp_port: int,
        *,
        file_size: Callable[[str], int],
        logout_wait: float = LOGOUT_WAIT,
        max_frame: int = DEFAULT_MAX_FRAME,
        reconnect: bool = False,
    ) -> None:
        self.udp_port = udp_port
        self.file_size = file_size
        self.logout_wait = logout_wait
        self.max_frame = max_frame
        self.state = State.USERNAME
        self.username = ""  # the name being logged in, then the user's
        self._typed: deque[str] = deque()  # lines typed while a request was in flight
        self._end_of_input = False
        self._replies_due = 0
        self._command: commands.Command | None = None  # the command awaiting replies
        self._file_size = 0  # of the file a /p2pvideo or /groupvideo in flight announced
        self._leave_by: float | None = None
        self.reconnect = reconnect
        self._secret = ""  # the password last sent, for logging in again
        self._relogging = False  # logging in again after a lost connection
        self._backoff = Backoff()
        self._retry_at: float | None = None  # the next attempt to connect, while RECONNECTING

    @property
    def waiting_for(self) -> Prompt | None:
        """What the user must type next, when nothing typed ahead is left to act on."""
        return None if self._typed else _PROMPTS.get(self.state)

    # --- events from the user ------------------------------------------------------------

    def start(self) -> list[Effect]:
        return [Print("Please login"), Ask(Prompt.USERNAME)]

    def line(self, text: str, now: float) -> list[Effect]:
        """The user typed ``text`` (without its line break)."""
        if self.state is State.DONE or self.state is State.LEAVING:
            return []
        self._typed.append(text)
        return self._next_input(now)

    def end_of_input(self, now: float) -> list[Effect]:
        """stdin closed (Ctrl-D): lines typed before it still run, then the user leaves."""
        self._end_of_input = True
        return self._next_input(now)

    def interrupt(self, now: float) -> list[Effect]:
        """Ctrl-C: leave now, dropping typed-ahead lines; a second Ctrl-C stops waiting for bye."""
        self._typed.clear()
        if self.state is State.RECONNECTING or self._relogging:
            return self._exit(1, GAVE_UP)
        if self.state in (State.USERNAME, State.CHECKING, State.PASSWORD, State.LOGGING_IN):
            return self._exit(1, LOGIN_CANCELLED)
        if self.state is State.LEAVING:
            return self._exit(0, render.bye(self.username))
        if self.state is State.DONE:
            return []
        return self._leave(now)

    # --- events from the server ----------------------------------------------------------

    def received(self, message: Message, now: float) -> list[Effect]:
        if self.state is State.DONE:
            return []
        if isinstance(message, _PUSHES):
            if isinstance(message, TransferOffer):
                return [Download(message)]
            if isinstance(message, TransferEnded):
                return [Ended(message)]
            return self._print(render.lines(message))
        if isinstance(message, Error) and message.code == Code.PROTOCOL:
            return self._exit(1, message.text)  # the server closes the connection after it
        if self._relogging:
            return self._relogin_reply(message, now)
        if self.state in (State.CHECKING, State.LOGGING_IN):
            return self._login_reply(message, now)
        return self._reply(message, now)

    def bad_message(self, reason: str) -> list[Effect]:
        """The server sent something that is no valid message: nothing after it can be trusted."""
        if self.state is State.DONE:
            return []
        return self._exit(1, f"Error. The server sent an invalid message ({reason}).")

    def connection_lost(self, now: float) -> list[Effect]:
        if self.state is State.DONE:
            return []
        if self.state is State.LEAVING:
            return self._exit(0, render.bye(self.username))
        if self.reconnect and (self.state in (State.READY, State.BUSY) or self._relogging):
            return self._lost(now)
        return self._exit(1, CONNECTION_LOST)

    # --- reconnecting --------------------------------------------------------------------

    def _lost(self, now: float) -> list[Effect]:
        effects: list[Effect] = [] if self._relogging else [Print(RECONNECTING)]
        self.state = State.RECONNECTING
        self._relogging = False
        self._command, self._replies_due = None, 0  # its replies will never come
        self._retry_at = now + self._backoff.next_delay()
        return effects

    def connected(self, now: float) -> list[Effect]:
        """The shell's ``Connect`` succeeded: log in again, as the user did."""
        if self.state is not State.RECONNECTING:
            return []
        self._relogging = True
        self.state = State.CHECKING
        return [Send(CheckUser(self.username))]

    def connect_failed(self, now: float) -> list[Effect]:
        if self.state is State.RECONNECTING:
            self._retry_at = now + self._backoff.next_delay()
        return []

    def _relogin_reply(self, message: Message, now: float) -> list[Effect]:
        if isinstance(message, Error):  # blocked, logged in elsewhere, password changed ...
            return self._exit(1, message.text)
        if isinstance(message, UserOk) and self.state is State.CHECKING:
            self.state = State.LOGGING_IN
            return [Send(Login(self.username, self._secret, self.udp_port))]
        if isinstance(message, Welcome) and self.state is State.LOGGING_IN:
            self._relogging = False
            self._backoff.reset()
            self.state = State.READY
            return [Print(RECONNECTED), Ask(Prompt.COMMAND), *self._next_input(now)]
        return []

    def _offline(self, text: str, now: float) -> list[Effect]:
        """A line typed while reconnecting: only what needs no server can run."""
        command = commands.parse(text)
        if command is None:
            return [Ask(Prompt.COMMAND)]
        if isinstance(command, commands.Logout):
            return self._exit(0, render.bye(self.username))
        if isinstance(command, (commands.Help, commands.Rejected)):
            return self._command_line(text, now)
        return [Print(NOT_CONNECTED), Ask(Prompt.COMMAND)]

    # --- time ----------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self.state is State.RECONNECTING:
            return self._retry_at
        return self._leave_by if self.state is State.LEAVING else None

    def tick(self, now: float) -> list[Effect]:
        if self.state is State.LEAVING and self._leave_by is not None and now >= self._leave_by:
            return self._exit(0, render.bye(self.username))
        if self.state is State.RECONNECTING and self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None  # until the shell reports how the attempt went
            return [Connect()]
        return []

    # --- input ---------------------------------------------------------------------------

    def _next_input(self, now: float) -> list[Effect]:
        """Act on typed lines for as long as the session waits for input."""
        effects: list[Effect] = []
        while self._typed and self.state in _PROMPTS:
            effects += self._take(self._typed.popleft(), now)
        if self._end_of_input and not self._typed and self.state in _PROMPTS:
            if self.state is State.READY:
                effects += self._leave(now)
            elif self.state is State.RECONNECTING:
                effects += self._exit(0, render.bye(self.username))
            else:
                effects += self._exit(1, LOGIN_CANCELLED)
        return effects

    def _take(self, text: str, now: float) -> list[Effect]:
        if self.state is State.USERNAME:
            return self._username(text.strip())
        if self.state is State.PASSWORD:
            return self._password(text.strip())
        if self.state is State.RECONNECTING:
            return self._offline(text, now)
        return self._command_line(text, now)

    def _username(self, username: str) -> list[Effect]:
        if not username:
            return [Ask(Prompt.USERNAME)]
        if not valid_name(username):  # no account can have it; the server would say so
            return [Print(INVALID_USERNAME), Ask(Prompt.USERNAME)]
        self.username = username
        self.state = State.CHECKING
        return [Send(CheckUser(username))]

    def _password(self, password: str) -> list[Effect]:
        if not password:
            return [Ask(Prompt.PASSWORD)]
        request = Login(self.username, password, self.udp_port)
        if self._unsendable(request):  # e.g. a space: no password in credentials.txt has one
            return [Print(INVALID_PASSWORD), Ask(Prompt.PASSWORD)]
        self.state = State.LOGGING_IN
        self._secret = password
        return [Send(request)]

    def _command_line(self, text: str, now: float) -> list[Effect]:
        command = commands.parse(text)
        if command is None:
            return [Ask(Prompt.COMMAND)]
        if isinstance(command, commands.Rejected):
            return [Print(command.error), Ask(Prompt.COMMAND)]
        if isinstance(command, commands.Help):
            return [*self._print(commands.help_lines(command.command)), Ask(Prompt.COMMAND)]
        if isinstance(command, commands.Logout):
            return self._leave(now)
        request = self._request(command)
        problem = request if isinstance(request, str) else self._unsendable(request)
        if problem:
            return [Print(problem), Ask(Prompt.COMMAND)]
        self.state = State.BUSY
        self._command = command
        self._replies_due = len(set(command.receivers)) if isinstance(command, commands.MsgTo) else 1
        return [Send(request)]

    def _request(self, command: commands.Command) -> Request | str:
        """The request for ``command``, or the error line when it cannot be made."""
        if isinstance(command, commands.MsgTo):
            return MsgTo(list(command.receivers), command.text)
        if isinstance(command, commands.ActiveUser):
            return ActiveUser()
        if isinstance(command, commands.CreateGroup):
            return CreateGroup(command.group, list(command.members))
        if isinstance(command, commands.JoinGroup):
            return JoinGroup(command.group)
        if isinstance(command, commands.GroupMsg):
            return GroupMsg(command.group, command.text)
        assert isinstance(command, (commands.P2PVideo, commands.GroupVideo))
        try:
            size = self.file_size(command.path)
        except FileNotFoundError:
            return f"Error. File {command.path} does not exist."
        except OSError as exc:
            return f"Error. Cannot read {command.path}: {exc.strerror}."
        self._file_size = size
        if isinstance(command, commands.P2PVideo):
            return P2PVideo(command.audience, command.filename, size)
        return GroupVideo(command.group, command.filename, size)

    def _unsendable(self, request: Request) -> str | None:
        """Why the server would refuse ``request`` as malformed (and close the connection).

        The parser already rejects bad fields with friendlier lines; this decides with the
        server's own codec and frame limit, so nothing malformed is ever sent.
        """
        payload = encode(request)
        if len(payload) > self.max_frame:
            return "Error. The command is too long to send."
        try:
            requests.decode(payload)
        except SchemaError as exc:
            return f"Error. Cannot send this command: {exc}."
        return None

    # --- replies -------------------------------------------------------------------------

    def _login_reply(self, message: Message, now: float) -> list[Effect]:
        if isinstance(message, UserOk) and self.state is State.CHECKING:
            self.state = State.PASSWORD
            return [Ask(Prompt.PASSWORD), *self._next_input(now)]
        if isinstance(message, Welcome) and self.state is State.LOGGING_IN:
            self.state = State.READY
            return [Print(render.WELCOME), Ask(Prompt.COMMAND), *self._next_input(now)]
        if isinstance(message, Error):
            if message.code == Code.INVALID_PASSWORD:
                self.state = State.PASSWORD
                return [Print(message.text), Ask(Prompt.PASSWORD), *self._next_input(now)]
            if message.code in (Code.INVALID_USERNAME, Code.ALREADY_LOGGED_IN):
                self.state = State.USERNAME
                return [Print(message.text), Ask(Prompt.USERNAME), *self._next_input(now)]
            return self._exit(1, message.text)  # blocked, or a code this client does not know
        return []  # not an answer to the login step in progress: the server broke protocol

    def _reply(self, message: Message, now: float) -> list[Effect]:
        effects = self._print(render.lines(message))
        command = self._command
        if isinstance(message, TransferReady) and isinstance(command, (commands.P2PVideo, commands.GroupVideo)):
            group = command.group if isinstance(command, commands.GroupVideo) else None
            # After Ctrl-C the audience was offered the file all the same: it is told at once
            effects.append(Upload(command.path, message, self._file_size, group,
                                  cancelled=self.state is State.LEAVING))
        if self.state is State.LEAVING:
            if isinstance(message, Bye):
                effects += self._exit(0)
            return effects  # a reply to a command still in flight: shown, nothing else started
        if self.state is State.BUSY:
            self._replies_due -= 1
            if self._replies_due == 0:
                self.state = State.READY
                self._command = None
                effects += [Ask(Prompt.COMMAND), *self._next_input(now)]
        return effects

    # --- leaving -------------------------------------------------------------------------

    def _leave(self, now: float) -> list[Effect]:
        self.state = State.LEAVING
        self._leave_by = now + self.logout_wait
        return [Send(Logout())]

    def _exit(self, code: int, line: str | None = None) -> list[Effect]:
        self.state = State.DONE
        return [*([Print(line)] if line is not None else []), Exit(code)]

    @staticmethod
    def _print(lines: list[str]) -> list[Effect]:
        return [Print(line) for line in lines]
