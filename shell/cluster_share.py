"""A cluster node's share of what the replicated chat decides, held until it is logged.

Every node applies every entry of the shared log and gets every effect; ``Share`` keeps this
node's part: replies to its own connections, console lines of entries it appended, and, while
it holds the writer lease, the log lines. Whatever an entry acknowledges waits, with every
entry after it, until the writer's mark says the entry's lines are written, so a reply never
overtakes its log line whichever node it leaves from.
"""

from __future__ import annotations

from collections import deque

from core.rules import Announce, Append, Close, Effect, Hold, Send

EntryId = tuple[int, int]  # a stream entry id, milliseconds and sequence
CONN_BITS = 32  # a connection id is NODE << CONN_BITS | local number: unique cluster-wide


def node_of(conn: int) -> int:
    return conn >> CONN_BITS


class Share:
    def __init__(self, node: int) -> None:
        self.node = node
        self.released: list[Effect] = []  # for the server's next turn
        # effects of entries whose log lines are not yet written, with the entries after them
        self._held: deque[tuple[EntryId, bool, list[Effect]]] = deque()
        self.written: EntryId = (0, 0)  # the writer's mark: entries up to here are logged
        self._unwritten: deque[tuple[EntryId, Append]] = deque()  # lines past the mark, for a takeover
        self.last_numbers: dict[str, int] = {}  # as the writer: the last number in each log file
        self.mark_due = False  # as the writer: lines written that the mark does not cover yet

    def take(self) -> list[Effect]:
        released, self.released = self.released, []
        return released

    def deliver(self, entry: EntryId, origin: int, effects: list[Effect], presence_changed: bool,
                writer: bool) -> None:
        """Keep this node's share of an entry's effects (in order), held until they are logged."""
        mine: list[Effect] = []
        logged = presence_changed  # userlog.txt changes
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                conns = tuple(c for c in effect.conns if node_of(c) == self.node)
                if conns:
                    mine.append(effect if len(conns) == len(effect.conns) else Send(conns, effect.message))
            elif kind is Append:
                logged = True
                if writer:
                    if self._new_line(effect):
                        mine.append(effect)
                else:
                    self._unwritten.append((entry, effect))
            elif kind is Close or kind is Hold:  # (a Hold only says a login waits: the node resumes it)
                if node_of(effect.conn) == self.node:
                    mine.append(effect)
            elif kind is Announce:
                if origin == self.node:
                    mine.append(effect)
        if writer and logged:
            # the server writes a turn's lines before it sends anything of the same turn
            self.written = max(self.written, entry)
            self.mark_due = True
        self._held.append((entry, logged, mine))
        self._release()

    def marked(self, mark: EntryId) -> None:
        """The writer's mark came: everything up to ``mark`` is logged."""
        self.written = max(self.written, mark)
        while self._unwritten and self._unwritten[0][0] <= self.written:
            self._unwritten.popleft()
        self._release()

    def take_over(self, last_numbers: dict[str, int], applied: EntryId) -> None:
        """This node became the writer: write the lines the last writer may not have written.

        ``last_numbers``: each log file's last number as it stands (after crash repair).
        """
        self.last_numbers = last_numbers
        for _, append in self._unwritten:
            if self._new_line(append):
                self.released.append(append)
        self._unwritten.clear()
        self.written = max(self.written, applied)
        self.mark_due = True
        self._release()

    def _release(self) -> None:
        held = self._held
        while held and (not held[0][1] or held[0][0] <= self.written):
            self.released += held.popleft()[2]

    def _new_line(self, append: Append) -> bool:
        """The writer's guard: a numbered line at or below its file's last number is there already."""
        if not append.line:
            return True  # creates the file
        number = int(append.line[: append.line.index(";")])
        if number <= self.last_numbers.get(append.log, 0):
            return False
        self.last_numbers[append.log] = number
        return True
