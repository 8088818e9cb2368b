"""The message schema: every request, reply and push as a typed value.

A frame's payload is a UTF-8 JSON object whose ``type`` field names the message; the other
fields are the dataclass fields of that message, by the same names. ``decode`` validates
everything a peer sends (structure, field types, lengths, printable text) and raises
``SchemaError`` with a reason fit to show; ``encode`` is its exact inverse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Callable, ClassVar, Union, get_args, get_origin, get_type_hints

from core.fields import (  # noqa: F401 -- the field kinds are part of the schema's interface
    FileName, MAX_FILENAME, MAX_LIST, MAX_NAME, MAX_PASSWORD, MAX_TEXT, Name, Password, Port, SCALARS, Text, TransferId, TransferKey, TYPE_NAMES, valid_filename, valid_name, valid_password, valid_text,
)

class SchemaError(Exception):
    """A payload that is not a valid message."""


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
    """Where to send one transfer: the audience's UDP address, the transfer's id and the key
    that authenticates its every datagram."""

    audience: Name
    ip: str
    udp_port: Port
    transfer_id: TransferId
    key: TransferKey


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
    key: TransferKey


@dataclass(slots=True)
class TransferEnded(Message):
    """Push to a transfer's other side: ``username`` left (logged out or dropped), so the
    transfer ``transfer_id`` can stop now rather than wait for silence."""

    TYPE: ClassVar[str] = "transfer_ended"
    transfer_id: TransferId
    username: Name


REQUESTS: tuple[type[Message], ...] = (
    CheckUser, Login, MsgTo, ActiveUser, CreateGroup, JoinGroup, GroupMsg, Logout, P2PVideo,
    GroupVideo,
)
REPLIES: tuple[type[Message], ...] = (
    UserOk, Welcome, Error, MsgSent, PrivateMessage, ActiveUsers, GroupCreated, GroupInvite,
    GroupJoined, GroupSent, GroupMessage, Bye, TransferReady, TransferOffer, TransferEnded,
)
Request = Union[
    CheckUser, Login, MsgTo, ActiveUser, CreateGroup, JoinGroup, GroupMsg, Logout, P2PVideo,
    GroupVideo,
]


# --- codec -------------------------------------------------------------------------------

# Each message class gets its validator and its encoder written once, at import, as Python
# source specialised to the class's fields and compiled with ``exec`` (as ``dataclasses``
# writes ``__init__``): both run for every message the relay forwards, so neither loops over
# fields, looks at a type annotation or builds a label per message. The source is made only
# from field names (identifiers) and the names bound in its namespace, never from input.

Check = Callable[[Any], Any]


def _compile(source: str, namespace: dict[str, Any]) -> Callable[[Any], Any]:
    """The one function ``source`` defines, with ``namespace`` as its globals."""
    code = compile(source, f"<codec {namespace.get('__name__', '')}>", "exec")
    exec(code, namespace)  # noqa: S102 -- generated from the schema, see above
    (function,) = [v for k, v in namespace.items() if k.startswith("generated_")]
    return function


def _is_scalar(annotation: Any) -> bool:
    return annotation in SCALARS


def _checker(annotation: Any, label: str) -> Check:
    """The validator of one field (named ``label`` in errors), from its type annotation."""
    if get_origin(annotation) is list:
        return _list_checker(get_args(annotation)[0], label)
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return _object_checker(annotation, label)
    return _scalar_checker(annotation, label)


def _list_checker(item: Any, label: str) -> Check:
    # Lists of names are what a user types (receivers, members) and are capped; lists of
    # records are the server's listings (active users, targets) and are bounded only by the
    # frame size, so 10,000 active users still fit one reply.
    check_item = _checker(item, label)
    if not _is_scalar(item):
        def check_records(value: Any) -> list[Any]:
            if not isinstance(value, list):
                raise SchemaError(f"{label} must be a list")
            return list(map(check_item, value))

        return check_records
    kind, valid, _ = SCALARS[item]

    def check_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise SchemaError(f"{label} must be a list")
        if len(value) > MAX_LIST:
            raise SchemaError(f"{label} must have at most {MAX_LIST} items")
        for entry in value:  # a scalar comes out as it went in: the list is the checked value
            if type(entry) is not kind or not valid(entry):
                check_item(entry)  # raises, saying why
        return value

    return check_list


def _scalar_checker(annotation: type, label: str) -> Check:
    kind, valid, reason = SCALARS[annotation]
    wrong_type = f"{label} must be {TYPE_NAMES[kind]}"

    def check_scalar(value: Any) -> Any:
        if type(value) is kind and valid(value):
            return value
        raise SchemaError(label + reason(value) if type(value) is kind else wrong_type)

    return check_scalar


def _object_checker(cls: type, label: str) -> Check:
    """The validator of a JSON object holding the fields of ``cls``; returns a ``cls``.

    For ``MsgTo`` it reads::

        def generated_check(obj):
            if not isinstance(obj, dict):
                raise SchemaError(not_object)
            try:
                v0 = obj['receivers']
                v1 = obj['text']
            except KeyError as exc:
                raise SchemaError(missing.format(exc.args[0])) from None
            if type(v1) is not kind1 or not valid1(v1):
                explain1(v1)
            return cls(check0(v0), v1)
    """
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"__name__": label, "cls": cls, "SchemaError": SchemaError,
                                 "not_object": f"{label} must be an object",
                                 "missing": f"{label}: missing field '{{}}'"}
    body = ["def generated_check(obj):",
            "    if not isinstance(obj, dict):",
            "        raise SchemaError(not_object)"]
    if names:
        body.append("    try:")
        body += [f"        v{i} = obj[{name!r}]" for i, name in enumerate(names)]
        body += ["    except KeyError as exc:  # only obj[name] raises it: the checks index nothing",
                 "        raise SchemaError(missing.format(exc.args[0])) from None"]
    arguments = []
    for i, name in enumerate(names):
        annotation = hints[name]
        if _is_scalar(annotation):  # checked inline; the checker is called only to explain a refusal
            namespace[f"kind{i}"], namespace[f"valid{i}"], _ = SCALARS[annotation]
            namespace[f"explain{i}"] = _scalar_checker(annotation, f"{label}.{name}")
            body += [f"    if type(v{i}) is not kind{i} or not valid{i}(v{i}):", f"        explain{i}(v{i})"]
            arguments.append(f"v{i}")
        else:
            namespace[f"check{i}"] = _checker(annotation, f"{label}.{name}")
            arguments.append(f"check{i}(v{i})")
    body.append(f"    return cls({', '.join(arguments)})")
    return _compile("\n".join(body) + "\n", namespace)


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
    """Encode a ``cls`` as a JSON object with a ``type`` member ``kind`` first, if given.

    For ``MsgSent`` it reads (one f-string, no loop)::

        def generated_encode(value):
            return f'{{"type":"msg_sent","receiver":{convert0(value.receiver)},"timestamp":{convert1(value.timestamp)}}}'
    """
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    members = [f'"type":{encode_basestring(kind)}'] if kind is not None else []
    members += [f'"{name}":{{convert{i}(value.{name})}}' for i, name in enumerate(names)]
    text = "{{" + ",".join(members) + "}}"
    assert "'" not in text and "\\" not in text  # names and types are identifiers
    namespace: dict[str, Any] = {"__name__": cls.__name__}
    namespace.update((f"convert{i}", _encoder(hints[name])) for i, name in enumerate(names))
    return _compile(f"def generated_encode(value):\n    return f'{text}'\n", namespace)


_SCAN = json.JSONDecoder().scan_once  # (text, index) -> (value, end); StopIteration if no value
_JSON_SPACE = " \t\n\r"  # the white space JSON allows around a value


class Codec:
    """Encodes messages and decodes payloads of one direction's message set."""

    def __init__(self, accepted: tuple[type[Message], ...]) -> None:
        self._by_type = {cls.TYPE: _object_checker(cls, cls.TYPE) for cls in accepted}

    def decode(self, payload: bytes) -> Message:
        """Parse and validate one payload; SchemaError says why it is not a message."""
        try:
            # decode strictly first: json.loads(bytes) would also take UTF-16/32 and a BOM,
            # and let encoded surrogates through ("surrogatepass"). scan_once is json.loads
            # without its two regular-expression scans for white space (half its cost here)
            # and without raw_decode's wrapper, which only turns StopIteration into an error.
            text = payload.decode("utf-8").strip(_JSON_SPACE)
            obj, end = _SCAN(text, 0)
        except (UnicodeDecodeError, ValueError, StopIteration, RecursionError) as exc:
            raise SchemaError("payload is not UTF-8 JSON") from exc
        if end != len(text):
            raise SchemaError("payload is not UTF-8 JSON: extra data after the value")
        try:  # a list or a string has no "type" either; an unhashable one is no known type
            check = self._by_type[obj["type"]]
        except (TypeError, KeyError):
            if not isinstance(obj, dict):
                raise SchemaError("payload must be a JSON object") from None
            raise SchemaError(f"unknown message type {obj.get('type')!r}"[:200]) from None
        return check(obj)


_ENCODERS: dict[type, Encoder] = {cls: _object_encoder(cls, cls.TYPE) for cls in (*REQUESTS, *REPLIES)}


def encode(message: Message) -> bytes:
    """The payload of ``message``: compact JSON, non-ASCII text as UTF-8, not escaped."""
    return _ENCODERS[type(message)](message).encode()


requests = Codec(REQUESTS)
replies = Codec(REPLIES)
