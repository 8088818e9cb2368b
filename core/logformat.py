"""The server's log files: names, exact line formats, and crash repair.

Formats (SPEC §3): ``messagelog.txt`` and ``GROUP_messagelog.txt`` hold
``NUM; TIMESTAMP; NAME; MESSAGE`` and ``userlog.txt`` holds
``SEQ; TIMESTAMP; USERNAME; CLIENT_IP; CLIENT_UDP_PORT``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

TIMESTAMP_FORMAT = "%d %b %Y %H:%M:%S"
USERLOG = "userlog.txt"
MESSAGELOG = "messagelog.txt"
GROUP_LOG_SUFFIX = "_messagelog.txt"


def group_log_name(group: str) -> str:
    return group + GROUP_LOG_SUFFIX


def group_of_log(filename: str) -> str | None:
    """The group whose log ``filename`` is, or None when it is no group log."""
    if not filename.endswith(GROUP_LOG_SUFFIX):
        return None
    group = filename[: -len(GROUP_LOG_SUFFIX)]
    return group if group.isascii() and group.isalnum() else None


class Clock:
    """Formats timestamps, formatting each second only once (the relay's hot path)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime(TIMESTAMP_FORMAT, time.localtime(second))
        return self._text


def message_line(number: int, timestamp: str, name: str, text: str) -> str:
    return f"{number}; {timestamp}; {name}; {text}\n"


def userlog_line(seq: int, timestamp: str, username: str, ip: str, udp_port: int) -> str:
    return f"{seq}{userlog_entry(timestamp, username, ip, udp_port)}"


def userlog_entry(timestamp: str, username: str, ip: str, udp_port: int) -> str:
    """A userlog line without its SEQ, which changes whenever an earlier user leaves."""
    return f"; {timestamp}; {username}; {ip}; {udp_port}\n"


@dataclass(frozen=True)
class LogScan:
    """What the tail of a message log holds: where its whole lines end, its last number."""

    whole_length: int  # file offset just past the last newline; anything after is torn
    last_number: int


# A log line is at most a number, a timestamp, a name and 1,000 characters of four UTF-8
# bytes each, so a tail this long always holds the last whole line entire.
TAIL_BYTES = 16 * 1024


def scan_log(tail: bytes, offset: int) -> LogScan:
    """Scan ``tail``, the bytes of a log from file offset ``offset`` to its end.

    A crash can leave a partial last line (no newline): it lies past ``whole_length`` and is
    cut off at the next start. Whole lines are never touched: the log is history.
    """
    whole = tail.rfind(b"\n") + 1
    lines = tail[:whole].splitlines()
    if offset > 0:
        lines = lines[1:]  # the tail may begin in the middle of a line
    last_number = 0
    for line in reversed(lines):
        head = line.split(b";", 1)[0]
        if head.isdigit():
            last_number = int(head)
            break
    return LogScan(offset + whole, last_number)
