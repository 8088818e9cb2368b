"""The text of ``userlog.txt``, kept as numbered lines so that a rewrite costs one copy.

``userlog.txt`` lists the users active now in login order, numbered from 1 (SPEC §3), so a
logout renumbers every line after the leaver's. Rebuilding every line for each rewrite made a
burst of logins cost O(users²): a rewrite per few hundred logins, each formatting all users.
Here a line, once numbered, is kept until a logout before it changes its number: logins only
append lines (found from the end: no walk over the users before them), and a logout renumbers
from its own line on, once per rewrite however many left.
"""

from __future__ import annotations

from itertools import islice


class UserLog:
    def __init__(self) -> None:
        self._entries: dict[str, str] = {}  # username -> its line but for the SEQ, in login order
        self._lines: list[str] = []  # the numbered lines of the first entries, as last written
        self._index: dict[str, int] = {}  # username -> where its line is in ``_lines``
        self._valid = 0  # how many of ``_lines`` still hold their number and their user
        self._text = ""  # the join of ``_lines``

    def add(self, username: str, entry: str) -> None:
        """A login: its line goes last (``entry`` is ``logformat.userlog_entry``)."""
        self._entries[username] = entry

    def remove(self, username: str) -> None:
        """A logout: every line after the leaver's takes a number one lower."""
        del self._entries[username]
        index = self._index.pop(username, None)
        if index is not None:  # a line made since the last text() holds no place yet
            self._valid = min(self._valid, index)

    def text(self) -> str:
        """The whole file: the kept lines, then the ones made or renumbered since the last call."""
        lines, index, first = self._lines, self._index, self._valid
        if first < len(lines):  # renumbered from ``first`` on
            del lines[first:]
            self._text = "".join(lines)
        # the entries without a valid line are the last ones, taken from the end
        fresh = list(islice(reversed(self._entries.items()), len(self._entries) - first))
        made = []
        for seq, (username, entry) in enumerate(reversed(fresh), start=first + 1):
            made.append(f"{seq}{entry}")
            index[username] = seq - 1
        lines += made
        self._valid = len(lines)
        self._text += "".join(made)
        return self._text
