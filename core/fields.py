"""The kinds of field a message may carry, and what makes a value of each valid.

``core.messages`` builds its validators from these: a field annotated ``Name`` must hold a
string that ``valid_name`` accepts, and so on. Kept apart from the messages themselves so the
schema reads as a list of messages.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Callable

MAX_TEXT = 1000
MAX_NAME = 64
MAX_PASSWORD = 256
MAX_FILENAME = 255
MAX_LIST = 1000


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
    # isprintable() refuses every white space character but the ASCII space (Python's
    # definition of printable), so excluding " " leaves one word
    return 0 < len(name) <= MAX_NAME and name.isprintable() and " " not in name


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


class TransferKey(str):
    """Marker: 64 lower-case hex digits (32 random bytes): a transfer's MAC key."""


def _valid_transfer_key(text: str) -> bool:
    return len(text) == 64 and not text.strip("0123456789abcdef")


def _port_reason(number: int) -> str:
    return " must be a non-negative integer" if number < 0 else " must be a port number"


def _reason(text: str) -> Callable[[Any], str]:
    return lambda value: text


class Port(int):
    """Marker: a UDP or TCP port number."""


# Each scalar kind: the JSON type a value must have (exactly: ``true`` is no integer), whether
# a value of that type is valid, and, only for one that is not, why (after the field's name).
SCALARS: dict[type, tuple[type, Callable[[Any], bool], Callable[[Any], str]]] = {
    str: (str, lambda text: True, _reason("")),
    int: (int, (0).__le__, _reason(" must be a non-negative integer")),
    Port: (int, lambda number: 0 <= number <= 65535, _port_reason),
    Name: (str, valid_name, _reason(f" must be 1 to {MAX_NAME} printable characters without spaces")),
    Password: (str, valid_password, _reason(f" must be 1 to {MAX_PASSWORD} printable characters without spaces")),
    Text: (str, lambda text: valid_text(text) is None, lambda text: f": {valid_text(text)}"),
    FileName: (str, valid_filename, _reason(" must be a plain file name")),
    TransferId: (str, _valid_transfer_id, _reason(" must be 32 lower-case hex digits")),
    TransferKey: (str, _valid_transfer_key, _reason(" must be 64 lower-case hex digits")),
}
TYPE_NAMES = {str: "a string", int: "a non-negative integer"}
