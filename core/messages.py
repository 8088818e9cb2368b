"""The message schema: every request, reply and push as a typed value.

A frame's payload is a UTF-8 JSON object whose ``type`` field names the message; the other
fields are the dataclass fields of that message, by the same names. ``decode`` validates
everything a peer sends (structure, field types, lengths, printable text) and raises
``SchemaError`` with a reason fit to show; ``encode`` is its exact inverse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Union, get_args, get_origin, get_type_hints

MAX_TEXT = 1000
MAX_NAME = 64
MAX_PASSWORD = 256
MAX_FILENAME = 255
MAX_LIST = 1000


class SchemaError(Exception):
    """A payload that is not a valid message."""


# --- field kinds -------------------------------------------------------------------------

def is_printable_line(text: str) -> bool:
    """True for text with no control characters (so no line breaks, no escape sequences).

    ``str.isprintable`` also rejects separators like U+2028 that terminals and editors
    treat as line breaks, which is exactly what a log line must never contain.
    """
    return text.isprintable()


def valid_text(text: str) -> str | None:
    """Why ``text`` cannot be a chat message, or None when it can."""
    if not text.strip():
        return "message is empty"
    if len(text) > MAX_TEXT:
        return f"message is longer than {MAX_TEXT} characters"
    if not is_printable_line(text):
        return "message contains control characters"
    return None


def valid_name(name: str) -> bool:
    """A username or group name as it may appear on the wire: one printable word."""
    # split() finds any white space at C speed: a word is its only piece
    return 0 < len(name) <= MAX_NAME and name.isprintable() and name.split() == [name]


def valid_password(password: str) -> bool:
    """A password as it may appear on the wire (and so as anyone could ever log in with)."""
    return 0 < len(password) <= MAX_PASSWORD and password.isprintable() and " " not in password


def valid_filename(name: str) -> bool:
    """A file's basename that can be saved without leaving the receive directory."""
    return (
        0 < len(name) <= MAX_FILENAME
        and name.isprintable()
        and "/" not in name
        and "\\" not in name
        and name not in (".", "..")
        and ".." not in name
    )


class Name(str):
    """Marker: a username or group name."""


class Password(str):
    """Marker: a password, printable without spaces."""


class Text(str):
    """Marker: one line of chat text."""


class FileName(str):
    """Marker: a file's basename."""


class TransferId(str):
    """Marker: 32 lower-case hex digits (16 random bytes)."""


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string")
    return value


def _check_name(value: Any, what: str) -> str:
    if not valid_name(_check_str(value, what)):
        raise SchemaError(f"{what} must be 1 to {MAX_NAME} printable characters without spaces")
    return value


def _check_password(value: Any, what: str) -> str:
    text = _check_str(value, what)
    if not valid_password(text):
        raise SchemaError(f"{what} must be 1 to {MAX_PASSWORD} printable characters without spaces")
    return text


def _check_text(value: Any, what: str) -> str:
    problem = valid_text(_check_str(value, what))
    if problem:
        raise SchemaError(f"{what}: {problem}")
    return value


def _check_filename(value: Any, what: str) -> str:
    if not valid_filename(_check_str(value, what)):
        raise SchemaError(f"{what} must be a plain file name")
    return value


def _check_transfer_id(value: Any, what: str) -> str:
    text = _check_str(value, what)
    if len(text) != 32 or text.strip("0123456789abcdef"):
        raise SchemaError(f"{what} must be 32 lower-case hex digits")
    return text


def _check_int(value: Any, what: str) -> int:
    # bool is an int subclass in Python but never a number on the wire
    if type(value) is not int or value < 0:
        raise SchemaError(f"{what} must be a non-negative integer")
    return value


def _check_port(value: Any, what: str) -> int:
    if _check_int(value, what) > 65535:
        raise SchemaError(f"{what} must be a port number")
    return value


class Port(int):
    """Marker: a UDP or TCP port number."""


Checker = Callable[[Any, str], Any]
_SCALAR_CHECKS: dict[type, Checker] = {
    str: _check_str,
    int: _check_int,
    Name: _check_name,
    Password: _check_password,
    Text: _check_text,
    FileName: _check_filename,
    TransferId: _check_transfer_id,
    Port: _check_port,
}


class Code:
    """Error codes: they tell a client what to do next; the text is what to show."""

    INVALID_USERNAME = "invalid_username"  # ask for the username again
    INVALID_PASSWORD = "invalid_password"  # ask for the password again
    ALREADY_LOGGED_IN = "already_logged_in"  # ask for the username again
    BLOCKED = "blocked"  # exit; the server closes the connection
    COMMAND = "command"  # show it and prompt again
    PROTOCOL = "protocol"  # the request broke the protocol; the connection is closed


# --- the messages ------------------------------------------------------------------------

class Message:
    """Base of every message; ``TYPE`` is its ``type`` field on the wire."""

    TYPE: ClassVar[str]


@dataclass(frozen=True, slots=True)
class Record:
    """Base of structured values nested inside messages."""


# client -> server ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CheckUser(Message):
    """First login step: is this username one that may log in now?"""

    TYPE: ClassVar[str] = "check_user"
    username: Name


@dataclass(frozen=True, slots=True)
class Login(Message):
    TYPE: ClassVar[str] = "login"
    username: Name
    password: Password
    udp_port: Port


@dataclass(frozen=True, slots=True)
class MsgTo(Message):
    TYPE: ClassVar[str] = "msgto"
    receivers: list[Name]
    text: Text


@dataclass(frozen=True, slots=True)
class ActiveUser(Message):
    TYPE: ClassVar[str] = "activeuser"


@dataclass(frozen=True, slots=True)
class CreateGroup(Message):
    TYPE: ClassVar[str] = "creategroup"
    group: Name
    members: list[Name]


@dataclass(frozen=True, slots=True)
class JoinGroup(Message):
    TYPE: ClassVar[str] = "joingroup"
    group: Name


@dataclass(frozen=True, slots=True)
class GroupMsg(Message):
    TYPE: ClassVar[str] = "groupmsg"
    group: Name
    text: Text


@dataclass(frozen=True, slots=True)
class Logout(Message):
    TYPE: ClassVar[str] = "logout"


@dataclass(frozen=True, slots=True)
class P2PVideo(Message):
    """Ask the server to set up a transfer of ``filename`` (``size`` bytes) to ``audience``."""

    TYPE: ClassVar[str] = "p2pvideo"
    audience: Name
    filename: FileName
    size: int


@dataclass(frozen=True, slots=True)
class GroupVideo(Message):
    """Ask the server to set up a transfer to every other joined, active member."""

    TYPE: ClassVar[str] = "groupvideo"
    group: Name
    filename: FileName
    size: int


# server -> client ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UserOk(Message):
    """The username may log in: ask for the password."""

    TYPE: ClassVar[str] = "user_ok"


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    username: Name


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A request failed; ``text`` is the exact line to show, ``code`` says what to do next."""

    TYPE: ClassVar[str] = "error"
    code: str
    text: str


@dataclass(frozen=True, slots=True)
class MsgSent(Message):
    TYPE: ClassVar[str] = "msg_sent"
    receiver: Name
    timestamp: str


@dataclass(frozen=True, slots=True)
class PrivateMessage(Message):
    TYPE: ClassVar[str] = "message"
    sender: Name
    text: Text
    timestamp: str


@dataclass(frozen=True, slots=True)
class ActiveUserEntry(Record):
    username: Name
    ip: str
    udp_port: Port
    since: str


@dataclass(frozen=True, slots=True)
class ActiveUsers(Message):
    TYPE: ClassVar[str] = "active_users"
    users: list[ActiveUserEntry]


@dataclass(frozen=True, slots=True)
class GroupCreated(Message):
    TYPE: ClassVar[str] = "group_created"
    group: Name
    members: list[Name]


@dataclass(frozen=True, slots=True)
class GroupInvite(Message):
    TYPE: ClassVar[str] = "group_invite"
    group: Name
    creator: Name


@dataclass(frozen=True, slots=True)
class GroupJoined(Message):
    TYPE: ClassVar[str] = "group_joined"
    group: Name


@dataclass(frozen=True, slots=True)
class GroupSent(Message):
    TYPE: ClassVar[str] = "group_sent"
    group: Name


@dataclass(frozen=True, slots=True)
class GroupMessage(Message):
    TYPE: ClassVar[str] = "group_message"
    group: Name
    sender: Name
    text: Text
    timestamp: str


@dataclass(frozen=True, slots=True)
class Bye(Message):
    TYPE: ClassVar[str] = "bye"
    username: Name


@dataclass(frozen=True, slots=True)
class TransferTarget(Record):
    """Where to send one transfer: the audience's UDP address and the transfer's id."""

    audience: Name
    ip: str
    udp_port: Port
    transfer_id: TransferId


@dataclass(frozen=True, slots=True)
class TransferReady(Message):
    """Reply to P2PVideo/GroupVideo: one target per audience member (none for an empty group)."""

    TYPE: ClassVar[str] = "transfer_ready"
    filename: FileName
    targets: list[TransferTarget]


@dataclass(frozen=True, slots=True)
class TransferOffer(Message):
    """Push to the audience: a transfer is coming from ``presenter`` at ``ip``:``udp_port``."""

    TYPE: ClassVar[str] = "transfer_offer"
    presenter: Name
    filename: FileName
    size: int
    ip: str
    udp_port: Port
    transfer_id: TransferId


REQUESTS: tuple[type[Message], ...] = (
    CheckUser, Login, MsgTo, ActiveUser, CreateGroup, JoinGroup, GroupMsg, Logout, P2PVideo,
    GroupVideo,
)
REPLIES: tuple[type[Message], ...] = (
    UserOk, Welcome, Error, MsgSent, PrivateMessage, ActiveUsers, GroupCreated, GroupInvite,
    GroupJoined, GroupSent, GroupMessage, Bye, TransferReady, TransferOffer,
)
Request = Union[
    CheckUser, Login, MsgTo, ActiveUser, CreateGroup, JoinGroup, GroupMsg, Logout, P2PVideo,
    GroupVideo,
]


# --- codec -------------------------------------------------------------------------------

def _checker(annotation: Any) -> Checker:
    """Build the validator for one field from its type annotation."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        check_item = _checker(item)

        # Lists of names are what a user types (receivers, members) and are capped; lists
        # of records are the server's listings (active users, targets) and are bounded
        # only by the frame size, so 10,000 active users still fit one reply.
        limit = None if issubclass(item, Record) else MAX_LIST

        def check_list(value: Any, what: str) -> list[Any]:
            if not isinstance(value, list):
                raise SchemaError(f"{what} must be a list")
            if limit is not None and len(value) > limit:
                raise SchemaError(f"{what} must have at most {limit} items")
            return [check_item(v, what) for v in value]

        return check_list
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return _record_checker(annotation)
    return _SCALAR_CHECKS[annotation]


def _record_checker(cls: type) -> Checker:
    field_checks = _field_checks(cls)

    def check_record(value: Any, what: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(f"{what} must be an object")
        return cls(**_checked_fields(value, field_checks, what))

    return check_record


def _field_checks(cls: type) -> list[tuple[str, Checker]]:
    hints = get_type_hints(cls)
    return [(f.name, _checker(hints[f.name])) for f in fields(cls)]


def _checked_fields(obj: dict[str, Any], checks: list[tuple[str, Checker]], what: str) -> dict[str, Any]:
    out = {}
    for name, check in checks:
        if name not in obj:
            raise SchemaError(f"{what}: missing field '{name}'")
        out[name] = check(obj[name], f"{what}.{name}")
    return out


class Codec:
    """Encodes messages and decodes payloads of one direction's message set."""

    def __init__(self, accepted: tuple[type[Message], ...]) -> None:
        self._by_type = {cls.TYPE: (cls, _field_checks(cls)) for cls in accepted}

    def decode(self, payload: bytes) -> Message:
        """Parse and validate one payload; SchemaError says why it is not a message."""
        try:
            # decode strictly first: json.loads(bytes) would also take UTF-16/32 and a BOM,
            # and let encoded surrogates through ("surrogatepass")
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SchemaError("payload is not UTF-8 JSON") from exc
        if not isinstance(obj, dict):
            raise SchemaError("payload must be a JSON object")
        kind = obj.get("type")
        entry = self._by_type.get(kind) if isinstance(kind, str) else None
        if entry is None:
            raise SchemaError(f"unknown message type {kind!r}"[:200])
        cls, checks = entry
        return cls(**_checked_fields(obj, checks, cls.TYPE))


def to_json(message: Message) -> dict[str, Any]:
    """The JSON object of ``message`` (records nested as objects)."""
    obj: dict[str, Any] = {"type": message.TYPE}
    obj.update(_plain(message))
    return obj


# Field names per class, looked up once: dataclasses.fields() per message showed up in the
# relay's profile.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    if isinstance(value, (Message, Record)):
        cls = type(value)
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(value))
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# One encoder for every message: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(message: Message) -> bytes:
    """The payload of ``message``; non-ASCII text is sent as UTF-8, not escaped."""
    return _ENCODER.encode(to_json(message)).encode()


requests = Codec(REQUESTS)
replies = Codec(REPLIES)
