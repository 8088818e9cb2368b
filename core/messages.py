"""The message schema: every request, reply and push as a typed value.

A frame's payload is a UTF-8 JSON object whose ``type`` field names the message; the other
fields are the dataclass fields of that message, by the same names. ``decode`` validates
everything a peer sends (structure, field types, lengths, printable text) and raises
``SchemaError`` with a reason fit to show; ``encode`` is its exact inverse.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, fields
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from operator import attrgetter
from typing import Any, Callable, ClassVar, Union, get_args, get_origin, get_type_hints

MAX_TEXT = 1000
MAX_NAME = 64
MAX_PASSWORD = 256
MAX_FILENAME = 255
MAX_LIST = 1000


class SchemaError(Exception):
    """A payload that is not a valid message."""


# --- field kinds -------------------------------------------------------------------------

def valid_text(text: str) -> str | None:
    """Why ``text`` cannot be a chat message, or None when it can."""
    if not text.strip():
        return "message is empty"
    if len(text) > MAX_TEXT:
        return f"message is longer than {MAX_TEXT} characters"
    # isprintable() refuses every control character (so no line breaks, no escape sequences)
    # and also separators like U+2028 that terminals and editors treat as line breaks: what
    # a log line must never contain
    if not text.isprintable():
        return _unprintable(text)
    return None


ZWJ = "\u200d"  # joins emoji into one (👨‍👩‍👧): allowed between two visible characters


def _unprintable(text: str) -> str | None:
    """Why ``text``, which is not all printable, cannot be a message (None: it can; its only
    unprintable characters are zero-width joiners inside emoji or words)."""
    for index, char in enumerate(text):
        if char.isprintable():
            continue
        if joins(text, index):
            continue
        category, code = unicodedata.category(char), f"U+{ord(char):04X}"
        if category == "Cc":
            return f"message contains a control character ({code})"
        if category == "Zs":
            return f"message contains a space other than the plain space ({code})"
        return f"message contains an invisible or line-breaking character ({code})"
    return None


def joins(text: str, index: int) -> bool:
    """``text[index]`` is a zero-width joiner between two visible characters."""
    return (
        text[index] == ZWJ and 0 < index < len(text) - 1
        and _visible(text[index - 1]) and _visible(text[index + 1])
    )


def _visible(char: str) -> bool:
    return char.isprintable() and not char.isspace()


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


def _valid_transfer_id(text: str) -> bool:
    return len(text) == 32 and not text.strip("0123456789abcdef")


def _port_reason(number: int) -> str:
    return " must be a non-negative integer" if number < 0 else " must be a port number"


def _reason(text: str) -> Callable[[Any], str]:
    return lambda value: text


class Port(int):
    """Marker: a UDP or TCP port number."""


# Each scalar kind: the JSON type a value must have (exactly: ``true`` is no integer), whether
# a value of that type is valid, and, only for one that is not, why (after the field's name).
_SCALARS: dict[type, tuple[type, Callable[[Any], bool], Callable[[Any], str]]] = {
    str: (str, lambda text: True, _reason("")),
    int: (int, (0).__le__, _reason(" must be a non-negative integer")),
    Port: (int, lambda number: 0 <= number <= 65535, _port_reason),
    Name: (str, valid_name, _reason(f" must be 1 to {MAX_NAME} printable characters without spaces")),
    Password: (str, valid_password, _reason(f" must be 1 to {MAX_PASSWORD} printable characters without spaces")),
    Text: (str, lambda text: valid_text(text) is None, lambda text: f": {valid_text(text)}"),
    FileName: (str, valid_filename, _reason(" must be a plain file name")),
    TransferId: (str, _valid_transfer_id, _reason(" must be 32 lower-case hex digits")),
}
_TYPE_NAMES = {str: "a string", int: "a non-negative integer"}


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
    """Base of every message; ``TYPE`` is its ``type`` field on the wire.

    Messages are values: nothing changes one after it is made. They are not declared
    ``frozen`` only because a frozen dataclass takes three times as long to construct, and
    the relay makes two of them and decodes one per message forwarded.
    """

    TYPE: ClassVar[str]


@dataclass(slots=True)
class Record:
    """Base of structured values nested inside messages."""


# client -> server ---------------------------------------------------------------------

@dataclass(slots=True)
class CheckUser(Message):
    """First login step: is there an account by this name? (Nothing more is told before the
    password: whether it is blocked or logged in is the answer to ``Login``.)"""

    TYPE: ClassVar[str] = "check_user"
    username: Name


@dataclass(slots=True)
class Login(Message):
    TYPE: ClassVar[str] = "login"
    username: Name
    password: Password
    udp_port: Port


@dataclass(slots=True)
class MsgTo(Message):
    TYPE: ClassVar[str] = "msgto"
    receivers: list[Name]
    text: Text


@dataclass(slots=True)
class ActiveUser(Message):
    TYPE: ClassVar[str] = "activeuser"


@dataclass(slots=True)
class CreateGroup(Message):
    TYPE: ClassVar[str] = "creategroup"
    group: Name
    members: list[Name]


@dataclass(slots=True)
class JoinGroup(Message):
    TYPE: ClassVar[str] = "joingroup"
    group: Name


@dataclass(slots=True)
class GroupMsg(Message):
    TYPE: ClassVar[str] = "groupmsg"
    group: Name
    text: Text


@dataclass(slots=True)
class Logout(Message):
    TYPE: ClassVar[str] = "logout"


@dataclass(slots=True)
class P2PVideo(Message):
    """Ask the server to set up a transfer of ``filename`` (``size`` bytes) to ``audience``."""

    TYPE: ClassVar[str] = "p2pvideo"
    audience: Name
    filename: FileName
    size: int


@dataclass(slots=True)
class GroupVideo(Message):
    """Ask the server to set up a transfer to every other joined, active member."""

    TYPE: ClassVar[str] = "groupvideo"
    group: Name
    filename: FileName
    size: int


# server -> client ---------------------------------------------------------------------

@dataclass(slots=True)
class UserOk(Message):
    """The username names an account: ask for the password."""

    TYPE: ClassVar[str] = "user_ok"


@dataclass(slots=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    username: Name


@dataclass(slots=True)
class Error(Message):
    """A request failed; ``text`` is the exact line to show, ``code`` says what to do next."""

    TYPE: ClassVar[str] = "error"
    code: str
    text: str


@dataclass(slots=True)
class MsgSent(Message):
    TYPE: ClassVar[str] = "msg_sent"
    receiver: Name
    timestamp: str


@dataclass(slots=True)
class PrivateMessage(Message):
    TYPE: ClassVar[str] = "message"
    sender: Name
    text: Text
    timestamp: str


@dataclass(slots=True)
class ActiveUserEntry(Record):
    username: Name
    ip: str
    udp_port: Port
    since: str


@dataclass(slots=True)
class ActiveUsers(Message):
    TYPE: ClassVar[str] = "active_users"
    users: list[ActiveUserEntry]


@dataclass(slots=True)
class GroupCreated(Message):
    TYPE: ClassVar[str] = "group_created"
    group: Name
    members: list[Name]


@dataclass(slots=True)
class GroupInvite(Message):
    TYPE: ClassVar[str] = "group_invite"
    group: Name
    creator: Name


@dataclass(slots=True)
class GroupJoined(Message):
    TYPE: ClassVar[str] = "group_joined"
    group: Name


@dataclass(slots=True)
class GroupSent(Message):
    TYPE: ClassVar[str] = "group_sent"
    group: Name


@dataclass(slots=True)
class GroupMessage(Message):
    TYPE: ClassVar[str] = "group_message"
    group: Name
    sender: Name
    text: Text
    timestamp: str


@dataclass(slots=True)
class Bye(Message):
    TYPE: ClassVar[str] = "bye"
    username: Name


@dataclass(slots=True)
class TransferTarget(Record):
    """Where to send one transfer: the audience's UDP address and the transfer's id."""

    audience: Name
    ip: str
    udp_port: Port
    transfer_id: TransferId


@dataclass(slots=True)
class TransferReady(Message):
    """Reply to P2PVideo/GroupVideo: one target per audience member (none for an empty group)."""

    TYPE: ClassVar[str] = "transfer_ready"
    filename: FileName
    targets: list[TransferTarget]


@dataclass(slots=True)
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

# Each message class gets its decoder and its encoder built once, from its type hints, at
# import. Both run for every message the relay forwards, so neither looks at a type, builds a
# label or walks ``fields()`` per message.

Check = Callable[[Any], Any]


def _checker(annotation: Any, label: str) -> Check:
    """The validator of one field (named ``label`` in errors), from its type annotation."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        check_item = _checker(item, label)

        # Lists of names are what a user types (receivers, members) and are capped; lists
        # of records are the server's listings (active users, targets) and are bounded
        # only by the frame size, so 10,000 active users still fit one reply.
        limit = None if issubclass(item, Record) else MAX_LIST

        def check_list(value: Any) -> list[Any]:
            if not isinstance(value, list):
                raise SchemaError(f"{label} must be a list")
            if limit is not None and len(value) > limit:
                raise SchemaError(f"{label} must have at most {limit} items")
            return list(map(check_item, value))

        return check_list
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return _object_checker(annotation, label)
    return _scalar_checker(annotation, label)


def _scalar_checker(annotation: type, label: str) -> Check:
    kind, valid, reason = _SCALARS[annotation]
    wrong_type = f"{label} must be {_TYPE_NAMES[kind]}"

    def check_scalar(value: Any) -> Any:
        if type(value) is kind and valid(value):
            return value
        raise SchemaError(label + reason(value) if type(value) is kind else wrong_type)

    return check_scalar


def _object_checker(cls: type, label: str) -> Check:
    """The validator of a JSON object holding the fields of ``cls``; returns a ``cls``."""
    hints = get_type_hints(cls)
    plan = [(f.name, _checker(hints[f.name], f"{label}.{f.name}")) for f in fields(cls)]

    def check_object(obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise SchemaError(f"{label} must be an object")
        try:
            return cls(*[check(obj[name]) for name, check in plan])
        except KeyError as exc:  # only obj[name] raises it: the checks index nothing
            raise SchemaError(f"{label}: missing field '{exc.args[0]}'") from None

    return check_object


Encoder = Callable[[Any], str]


def _encoder(annotation: Any) -> Encoder:
    """The JSON text of a value of one field kind, as compact as ``json.dumps`` makes it."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        encode_item = _encoder(item)
        return lambda value: "[" + ",".join(map(encode_item, value)) + "]"
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return _object_encoder(annotation)
    if issubclass(annotation, int):
        return int.__repr__  # what json.dumps writes for an int
    return encode_basestring  # json.dumps' own string escaping with ensure_ascii=False


def _object_encoder(cls: type, kind: str | None = None) -> Encoder:
    """Encode a ``cls`` as a JSON object with a ``type`` member ``kind`` first, if given."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    head = [f'"type":{encode_basestring(kind)}'] if kind is not None else []
    if not names:
        constant = "{" + ",".join(head) + "}"
        return lambda value: constant
    template = "{" + ",".join([m.replace("%", "%%") for m in head] + [f'"{n}":%s' for n in names]) + "}"
    converters = [_encoder(hints[name]) for name in names]
    get = attrgetter(*names) if len(names) > 1 else lambda value: (getattr(value, names[0]),)
    if all(c is encode_basestring for c in converters):  # the relay's messages: strings only
        return lambda value: template % tuple(map(encode_basestring, get(value)))
    return lambda value: template % tuple([convert(v) for convert, v in zip(converters, get(value))])


_DECODER = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"  # the white space JSON allows around a value


class Codec:
    """Encodes messages and decodes payloads of one direction's message set."""

    def __init__(self, accepted: tuple[type[Message], ...]) -> None:
        self._by_type = {cls.TYPE: _object_checker(cls, cls.TYPE) for cls in accepted}

    def decode(self, payload: bytes) -> Message:
        """Parse and validate one payload; SchemaError says why it is not a message."""
        try:
            # decode strictly first: json.loads(bytes) would also take UTF-16/32 and a BOM,
            # and let encoded surrogates through ("surrogatepass"). raw_decode is json.loads
            # without its two regular-expression scans for white space, half its cost here.
            text = payload.decode("utf-8").strip(_JSON_SPACE)
            obj, end = _DECODER.raw_decode(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SchemaError("payload is not UTF-8 JSON") from exc
        if end != len(text):
            raise SchemaError("payload is not UTF-8 JSON: extra data after the value")
        if not isinstance(obj, dict):
            raise SchemaError("payload must be a JSON object")
        kind = obj.get("type")
        check = self._by_type.get(kind) if isinstance(kind, str) else None
        if check is None:
            raise SchemaError(f"unknown message type {kind!r}"[:200])
        return check(obj)


_ENCODERS: dict[type, Encoder] = {cls: _object_encoder(cls, cls.TYPE) for cls in (*REQUESTS, *REPLIES)}


def encode(message: Message) -> bytes:
    """The payload of ``message``: compact JSON, non-ASCII text as UTF-8, not escaped."""
    return _ENCODERS[type(message)](message).encode()


requests = Codec(REQUESTS)
replies = Codec(REPLIES)
