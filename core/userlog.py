"""The bytes of ``userlog.txt``, kept numbered so that a rewrite formats only what changed.

``userlog.txt`` lists the users active now in login order, numbered from 1 (SPEC §3), so a
logout renumbers every line after the leaver's. Rebuilding every line for each rewrite made a
burst of logins cost O(users²): a rewrite per few hundred logins, each formatting all users.
Here a line, once numbered, is kept until a logout before it changes its number: logins only
append lines (found from the end: no walk over the users before them), and a logout renumbers
from its own line on, once per rewrite however many left.

The lines are kept as one buffer of UTF-8 that grows in place, and a rewrite writes that buffer
as it is: a new string and its encoding for each rewrite, half a megabyte each at 10,000 users,
cost more in fresh pages (page faults) than in copying.
"""

from __future__ import annotations

from itertools import islice


class UserLog:
    def __init__(self) -> None:
        self._entries: dict[str, str] = {}  # username -> its line but for the SEQ, in login order
        self._index: dict[str, int] = {}  # username -> the number of its line, less one, as last written
        self._ends: list[int] = []  # where each numbered line ends in ``_data``
        self._valid = 0  # how many of the numbered lines still hold their number and their user
        self._data = bytearray()

    def add(self, username: str, entry: str) -> None:
        """A login: its line goes last (``entry`` is ``logformat.userlog_entry``)."""
        self._entries[username] = entry

    def remove(self, username: str) -> None:
        """A logout: every line after the leaver's takes a number one lower."""
        del self._entries[username]
        index = self._index.pop(username, None)
        if index is not None:  # a line made since the last text() holds no place yet
            self._valid = min(self._valid, index)

    def text(self) -> memoryview:
        """The whole file, read-only, valid until the next ``add`` or ``remove``: the kept lines,
        then the ones made or renumbered since the last call."""
        ends, index, first = self._ends, self._index, self._valid
        del ends[first:]
        cut = ends[-1] if ends else 0
        # the entries without a valid line are the last ones, taken from the end
        fresh = list(islice(reversed(self._entries.items()), len(self._entries) - first))
        made = bytearray()
        for seq, (username, entry) in enumerate(reversed(fresh), start=first + 1):
            made += f"{seq}{entry}".encode()
            ends.append(cut + len(made))
            index[username] = seq - 1
        self._valid = len(ends)
        data = self._data
        try:
            del data[cut:]
            data += made
        except BufferError:  # the last text is still held (its view locks the buffer): keep it for its holder
            self._data = data = self._data[:cut] + made
        return memoryview(data).toreadonly()
