"""How text lays out on a terminal's rows: the widths and row counts the console draws by.

Pure: the console passes the terminal's width in. A character takes two cells when East
Asian wide or full-width, none when combining or a zero-width joiner, one otherwise — what
terminals do for all but a few emoji.
"""

from __future__ import annotations

import re
import unicodedata

# continuation rows of a wrapped line start with at least this many spaces, and a message's
# continuation rows start under its text ("TIMESTAMP, SENDER: " is skipped), as irssi does
MIN_INDENT = 2
# the start of an incoming message as core.render writes it: "01 Jun 2023 15:00:01, " then
# "GROUP, " (group messages) and "SENDER: "; names hold no spaces, so the first ": " ends it
_MESSAGE_HEAD = re.compile(r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d, (?:[A-Za-z0-9]+, )?\S+?: ")


def char_cells(char: str) -> int:
    if unicodedata.combining(char) or char == "\u200d" or unicodedata.category(char) == "Me":
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def cells(text: str) -> int:
    """How many terminal cells ``text`` takes."""
    if text.isascii():
        return len(text)
    return sum(map(char_cells, text))


def fit(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` cells."""
    width = 0
    for index, char in enumerate(text):
        width += char_cells(char)
        if width > columns:
            return text[:index]
    return text


def rows(width: int, columns: int) -> int:
    """Rows taken by ``width`` cells written from the start of a row (at least one)."""
    return max(1, -(-width // max(1, columns)))


def hanging_indent(line: str, columns: int) -> int:
    """Spaces before each continuation row of ``line`` when it wraps at ``columns``."""
    head = _MESSAGE_HEAD.match(line)
    indent = cells(head.group()) if head else MIN_INDENT
    return indent if indent <= columns // 2 else MIN_INDENT


def wrap(line: str, columns: int) -> list[str]:
    """The rows that show ``line`` at ``columns`` cells: the first as is, the rest indented
    (``hanging_indent``), so that no continuation row can pose as a line of its own — a
    message whose text holds spaces and then "TIMESTAMP, SOMEONE: ..." still reads as one."""
    if cells(line) <= columns:
        return [line]
    indent = hanging_indent(line, columns)
    result: list[str] = []
    row, width, start = "", 0, 0
    for index, char in enumerate(line):
        size = char_cells(char)
        if width + size > columns:
            result.append(row + line[start:index])
            row, width, start = " " * indent, indent, index
        width += size
    result.append(row + line[start:])
    return result
