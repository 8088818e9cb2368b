"""Cluster mode (``--redis URL``): several server processes that behave as one server.

The nodes share one totally ordered log of events, a Redis Stream, and each runs the same
``core.rules.Chat`` over it: a replicated state machine. Every connect, request and disconnect
is appended (XADD) by the node the client is on, and applied by every node (XREAD) in stream
order with the entry's own time as ``now``. So lockout, one session per user, login order,
message numbers and groups are the same on every node by construction, and the rules never
learn that Redis exists. Each node then carries out only its share of the effects: replies to
its own connections, console lines of its own requests, and, on the one node holding the
writer lease, the log lines. See README, "Cluster", for the picture and the reasoning.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import secrets
import selectors
import time
import traceback
from collections import deque
from typing import Any, Callable

from core import passwords
from core.messages import Code, Error, Login, Request, SchemaError, encode, requests
from core.rules import Chat, Close, Effect, Hold, Send

from .redis_link import RedisLink
from .cluster_share import CONN_BITS, EntryId, Share, node_of
from .resp import Address, ReplyError, call_blocking, parse_url

PREFIX = "tessenger:"
STREAM = PREFIX + "log"  # the replicated event log
META = PREFIX + "meta"  # the cluster's settings, fixed by its first node
NODES = PREFIX + "nodes"  # INCR: a fresh id per node process
WRITER = PREFIX + "writer"  # the log writer's lease: its node id, with a TTL

HEARTBEAT_TTL = 2.0  # a node silent this long is dead; its users are logged out
TICK = 0.4  # heartbeat, lease renewal and sweep period
LEASE_MARGIN = 0.5  # stop writing this long before the lease could have passed to another node
SWEEP_GRACE = HEARTBEAT_TTL + 1.5  # after (re)connecting: let every node renew its heartbeat first
READ_BATCH = 1000  # entries per XREAD
READ_BLOCK_MS = 1000
START_TIMEOUT = 3.0
MAX_UNCONFIRMED = 100_000  # requests on their way to Redis; past this a slow Redis gets no more

WRONG_PASSWORD = "-"  # what a replica sees for a password that did not match
UNAVAILABLE = "Error. The server cannot reach its Redis right now. Please try again in a moment."
LOST = "Error. This server lost contact with the cluster and was declared dead. Please log in again."

# entry kinds; an entry is b"KIND ORIGIN SEQ TARGET REST" in the stream field "m"
CONNECT, REQUEST, DISCONNECT, NODE_DEAD, WRITTEN, RESUME = b"c", b"r", b"d", b"x", b"w", b"u"

# acquire the lease if free, renew it if ours; 1 when we hold it
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# makes the rules' replica: (accounts, history, new_transfer_id=..., new_transfer_key=...) -> Chat,
# as server.py makes its own
NewChat = Callable[..., Chat]


class ClusterError(Exception):
    """A node cannot join its cluster; the message is the one line to print."""


def heartbeat_key(node: int) -> str:
    return f"{PREFIX}node:{node}"


def parse_entry_id(raw: bytes) -> EntryId:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


def fingerprint(accounts: dict[str, str], rules: list[Any]) -> str:
    """What every node of one cluster must agree on for the rules to decide alike."""
    return hashlib.sha256(json.dumps([sorted(accounts.items()), rules]).encode()).hexdigest()


def start(url: str, accounts: dict[str, str], rules: list[Any], history: dict[str, int],
          new_chat: NewChat) -> "Node":
    """Join (or found) the cluster: the one bounded, blocking exchange, before the loop runs.

    ``rules`` are the settings of ``new_chat``'s rules (attempts, block time, limits): every
    node must have the same. Raises ClusterError with the line to print when Redis is
    unreachable or disagrees.
    """
    try:
        address = parse_url(url)
    except ValueError as exc:
        raise ClusterError(f"Invalid --redis URL: {exc}") from None
    mine = fingerprint(accounts, rules)
    founding = json.dumps({"fingerprint": mine, "history": history, "secret": secrets.token_hex(32)})
    try:
        replies = call_blocking(address, [("SET", META, founding, "NX"), ("GET", META), ("INCR", NODES)], START_TIMEOUT)
    except OSError as exc:
        raise ClusterError(f"Cannot reach Redis at {address}: {exc.strerror or exc}") from None
    problem = next((r for r in replies if isinstance(r, ReplyError)), None)
    if problem is not None:
        raise ClusterError(f"Redis at {address} refused to start this node: {problem}")
    replies = replies[len(address.handshake()):]
    meta = json.loads(replies[1])
    if meta["fingerprint"] != mine:
        raise ClusterError("This node's credentials.txt or rules (attempts, block time, limits) differ from its cluster's")
    return Node(address, replies[2], accounts, meta["history"], bytes.fromhex(meta["secret"]), new_chat)


class Node:
    """This process's place in the cluster: its two Redis links and its replica of the chat."""

    def __init__(self, address: Address, node_id: int, accounts: dict[str, str], history: dict[str, int],
                 secret: bytes, new_chat: NewChat) -> None:
        self.address = address
        self.id = node_id
        self.first_conn_id = (node_id << CONN_BITS) + 1
        self._secret = secret
        self._accounts = accounts
        # the replicas check login proofs, never passwords: no password enters the shared log
        proofs = {username: self._proof_for(username) for username in accounts}
        self.replica = new_chat(proofs, history, new_transfer_id=self._transfer_id,
                                new_transfer_key=self._transfer_key)
        self.chat = SharedChat(self)
        self.logs: Any = None  # the server's Logs, once attached
        self.selector: selectors.BaseSelector | None = None
        self.commands: RedisLink | None = None  # XADD, heartbeat, lease, sweep
        self.reader: RedisLink | None = None  # XREAD BLOCK only: a blocked read holds up its connection
        # The commands link's Redis was seen to hold the cluster's data (META) since it last
        # connected: until then nothing is written, so a Redis restarted empty gets nothing.
        self._checked = False
        self._seq = 0  # numbers this node's entries: a retried XADD is applied once
        self._unconfirmed: deque[bytes] = deque()  # entries whose XADD is not answered yet, in order
        self._last_seq: dict[int, int] = {}  # per origin node: the last entry applied
        self._last_read = b"0-0"  # a new node replays the stream from its start
        self._applied: EntryId = (0, 0)
        self._local: set[int] = set()  # this node's connections
        self._ended: set[int] = set()  # connections the rules closed: their later requests are void
        self._waiting: dict[int, list[Request]] = {}  # held logins' connections: the requests behind them
        self._resumes: list[tuple[float, int]] = []  # a heap: when to resume this node's held logins
        self.share = Share(node_id)
        self._writer_until = 0.0  # this node writes the logs while now < this
        self.writer_epoch = 0
        self._next_tick = 0.0
        self._ready_since: float | None = None
        self._ever_ready = False
        self._declared: set[int] = set()  # nodes this node reported dead
        self._entry_raw = b""
        self._transfers_in_entry = 0
        self.closed = False  # stopping: write nothing more
        self._data_lost = False

    def attach(self, selector: selectors.BaseSelector, logs: Any) -> "WriterLogs":
        """Join the server's loop; return the logs the server is to write through."""
        self.selector = selector
        self.logs = logs
        self.commands = RedisLink(self.address, selector, self._commands_ready, self._link_down)
        self.reader = RedisLink(self.address, selector, self._read_next, self._link_down)
        return WriterLogs(logs, self)

    @property
    def available(self) -> bool:
        assert self.commands is not None and self.reader is not None
        return self.commands.ready and self.reader.ready

    def is_writer(self) -> bool:
        return not self.closed and time.time() < self._writer_until

    # --- called by the server's loop -----------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Timers, and the effects the Redis replies of this turn produced."""
        assert self.commands is not None and self.reader is not None
        self.commands.poll(now)
        self.reader.poll(now)
        if now >= self._next_tick and self._writable:
            self._next_tick = now + TICK
            self._heartbeat(now)
        while self._resumes and self._resumes[0][0] <= now:
            self.resume(heapq.heappop(self._resumes)[1])
        return self.share.take()

    def deadline(self) -> float:
        assert self.commands is not None and self.reader is not None
        times = [self._next_tick, *(t for t in (self.commands.deadline(), self.reader.deadline()) if t is not None)]
        if self._resumes:
            times.append(self._resumes[0][0])
        return min(times)

    def flush(self) -> None:
        """After the server wrote this turn's effects: publish the writer's mark, send requests."""
        assert self.commands is not None and self.reader is not None
        if self.share.mark_due and self._writable:
            self.share.mark_due = False
            self._submit(WRITTEN, 0, b"%d-%d" % self.share.written)
        self.commands.flush()
        self.reader.flush()

    def shutdown(self) -> None:
        """A clean stop: report this node gone at once (a bounded blocking send; the loop is over)."""
        self.closed = True
        if self._data_lost:
            return
        self._seq += 1
        gone = b"%s %d %d %d " % (NODE_DEAD, self.id, self._seq, self.id)
        for link in (self.commands, self.reader):
            if link is not None:
                link.close()
        try:
            call_blocking(self.address, [("XADD", STREAM, "*", "m", gone), ("DEL", heartbeat_key(self.id)),
                                         ("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                                  "redis.call('DEL', KEYS[1]) end", 1, WRITER, self.id)], 1.0)
        except OSError:
            pass  # the others find out from the heartbeat within HEARTBEAT_TTL

    # --- entries this node appends --------------------------------------------------------

    def _submit(self, kind: bytes, target: int, rest: bytes) -> None:
        self._seq += 1
        entry = b"%s %d %d %d %s" % (kind, self.id, self._seq, target, rest)
        self._unconfirmed.append(entry)
        if self._writable:
            self._xadd(entry)

    def _xadd(self, entry: bytes) -> None:
        assert self.commands is not None
        self.commands.send("XADD", STREAM, "*", "m", entry, callback=self._confirmed)

    def _confirmed(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):  # e.g. out of memory: keep it, retry on a new connection
            assert self.commands is not None
            self.commands.reset()
            return
        self._unconfirmed.popleft()

    def connect(self, conn: int, ip: str) -> None:
        # the session exists here at once (the server looks at it); the others add it in order
        self.replica.connect(conn, ip)
        self._local.add(conn)
        self._submit(CONNECT, conn, ip.encode())

    def request(self, conn: int, request: Request) -> list[Effect]:
        if self._ever_ready and not self.available or len(self._unconfirmed) >= MAX_UNCONFIRMED:
            # (at start-up a request waits for the first connect instead)
            return [Send((conn,), Error(Code.COMMAND, UNAVAILABLE))]
        if type(request) is Login:
            request = Login(request.username, self._proof(request), request.udp_port)
        self._submit(REQUEST, conn, encode(request))
        return []  # the effects come when the entry comes back from the stream

    def _proof_for(self, username: str) -> str:
        return hmac.new(self._secret, b"login/" + username.encode(), hashlib.sha256).hexdigest()[:32]

    def _proof(self, login: Login) -> str:
        """The password checked here, once; the log carries only whether it was right.

        A password check depends on nothing that changes, so checking it before the request
        takes its place in the log decides as checking it there would.
        """
        stored = self._accounts.get(login.username)
        if stored is not None and passwords.verify(login.password, stored):
            return self._proof_for(login.username)
        return WRONG_PASSWORD

    def resume(self, conn: int) -> None:
        """A held login's time has come (by this node's clock): every replica tries it again."""
        self._submit(RESUME, conn, b"")

    def disconnect(self, conn: int) -> list[Effect]:
        self._local.discard(conn)
        self._submit(DISCONNECT, conn, b"")
        return []

    # --- Redis links ---------------------------------------------------------------------

    @property
    def _writable(self) -> bool:
        return self.commands is not None and self.commands.ready and self._checked

    def _commands_ready(self) -> None:
        assert self.commands is not None
        # Writes wait for the answer: pipelined behind the check, they would land in an empty
        # Redis before the node learnt it was empty.
        self._checked = False
        self.commands.send("EXISTS", META, callback=self._meta_checked)
        self._became_ready()

    def _meta_checked(self, reply: Any) -> None:
        if reply == 0:  # a Redis restarted without its data: the shared log is gone
            self._data_lost = True  # and this node must write nothing into the next cluster's
            raise SystemExit(f"Redis at {self.address} lost the cluster's data (restarted without its AOF?); "
                             "this node stops")
        if isinstance(reply, ReplyError):
            assert self.commands is not None
            self.commands.reset()  # ask again on a new connection
            return
        self._checked = True
        for entry in self._unconfirmed:  # those that landed before the link broke are skipped when read
            self._xadd(entry)
        self._next_tick = 0.0

    def _link_down(self) -> None:
        self._ready_since = None

    def _became_ready(self) -> None:
        if self._ready_since is None and self.commands is not None and self.reader is not None and self.available:
            self._ready_since = time.time()
            self._ever_ready = True

    def _heartbeat(self, now: float) -> None:
        assert self.commands is not None
        ttl_ms = int(HEARTBEAT_TTL * 1000)
        self.commands.send("SET", heartbeat_key(self.id), 1, "PX", ttl_ms)
        self.commands.send("EVAL", LEASE_SCRIPT, 1, WRITER, self.id, ttl_ms,
                           callback=lambda reply: self._lease(reply, now))
        if self._ready_since is not None and now - self._ready_since >= SWEEP_GRACE:
            self._sweep()

    def _lease(self, reply: Any, sent_at: float) -> None:
        if reply != 1:
            self._writer_until = 0.0
            return
        taking_over = not self.is_writer()
        self._writer_until = sent_at + HEARTBEAT_TTL - LEASE_MARGIN
        if taking_over and not self.closed:
            self._take_over()

    def _sweep(self) -> None:
        """Report nodes whose users are online here but whose heartbeat has expired."""
        assert self.commands is not None
        others = sorted({node_of(c) for c in self.replica.sessions} - {self.id})
        self._declared &= set(others)
        if others:
            self.commands.send("MGET", *map(heartbeat_key, others), callback=lambda beats: self._swept(others, beats))

    def _swept(self, nodes: list[int], beats: Any) -> None:
        if isinstance(beats, ReplyError):
            return
        for node, beat in zip(nodes, beats):
            if beat is None and node not in self._declared:
                self._declared.add(node)
                self._submit(NODE_DEAD, node, b"")

    def _read_next(self) -> None:
        assert self.reader is not None
        self._became_ready()
        self.reader.send("XREAD", "COUNT", READ_BATCH, "BLOCK", READ_BLOCK_MS, "STREAMS", STREAM, self._last_read,
                         callback=self._entries)

    def _entries(self, reply: Any) -> None:
        assert self.reader is not None
        if isinstance(reply, ReplyError):
            self.reader.reset()
            return
        if reply:
            for raw_id, fields in reply[0][1]:
                self._last_read = raw_id
                self._apply(raw_id, fields[1])
        self._read_next()

    # --- applying the stream -------------------------------------------------------------

    def _apply(self, raw_id: bytes, entry: bytes) -> None:
        kind, origin_text, seq_text, target_text, rest = entry.split(b" ", 4)
        origin, seq = int(origin_text), int(seq_text)
        if seq <= self._last_seq.get(origin, 0):
            return  # an XADD retried after a lost reply had landed the first time
        self._last_seq[origin] = seq
        entry_id = parse_entry_id(raw_id)
        self._applied = entry_id
        now = self._time_of(entry_id)
        target = int(target_text)
        presence = self.replica.presence_version
        effects: list[Effect]
        if kind == REQUEST:
            effects = self._apply_request(raw_id, target, rest, now)
        elif kind == CONNECT:
            if target not in self.replica.sessions:
                self.replica.connect(target, rest.decode())
            return
        elif kind == DISCONNECT:
            self._ended.discard(target)
            self._waiting.pop(target, None)
            effects = self.replica.disconnect(target, now)
        elif kind == NODE_DEAD:
            effects = self._node_dead(target, now)
        elif kind == RESUME:
            effects = self._apply_resume(raw_id, target, now)
        elif kind == WRITTEN:
            self.share.marked(parse_entry_id(rest))
            return
        else:
            return  # a kind from a newer version: not ours to decide
        self.share.deliver(entry_id, origin, effects, self.replica.presence_version != presence, self.is_writer())

    def _time_of(self, entry: EntryId) -> float:
        """An entry's ``now`` for the rules: its time in the stream, by Redis's clock."""
        return entry[0] / 1000

    def _apply_request(self, raw_id: bytes, conn: int, payload: bytes, now: float) -> list[Effect]:
        if conn in self._ended or conn not in self.replica.sessions:
            return []  # sent after its connection's end, or its node was declared dead
        try:
            request = requests.decode(payload)  # validated by its node already
        except SchemaError:
            return []
        if conn in self._waiting:  # behind a held login: it waits its turn, in order
            self._waiting[conn].append(request)
            return []
        self._entry_raw, self._transfers_in_entry = raw_id, 0
        return self._guarded(conn, lambda: self.replica.handle(conn, request, now))

    def _apply_resume(self, raw_id: bytes, conn: int, now: float) -> list[Effect]:
        """The held login of ``conn``, then the requests that waited behind it (as one server)."""
        waiting = self._waiting.pop(conn, None)
        if waiting is None or conn in self._ended or conn not in self.replica.sessions:
            return []
        self._entry_raw, self._transfers_in_entry = raw_id, 0
        effects = self._guarded(conn, lambda: self.replica.resume(conn, now))
        for index, request in enumerate(waiting):
            if conn in self._ended:
                break
            if conn in self._waiting:  # held again
                self._waiting[conn] += waiting[index:]
                break
            effects += self._guarded(conn, lambda: self.replica.handle(conn, request, now))
        return effects

    def _guarded(self, conn: int, step: Callable[[], list[Effect]]) -> list[Effect]:
        """One step of the rules for ``conn``, and what its last effect means for the next."""
        try:
            effects = step()
        except Exception:  # a bug costs the connection, as on one server; every node does the same
            if node_of(conn) == self.id:
                traceback.print_exc()
            effects = [Send((conn,), Error(Code.PROTOCOL, "Error. Internal server error.")), Close(conn)]
        last = effects[-1] if effects else None
        if type(last) is Close:
            self._ended.add(conn)
        elif type(last) is Hold:
            self._waiting[conn] = []
            if node_of(conn) == self.id:  # its node resumes it in time
                heapq.heappush(self._resumes, (last.until, conn))
        return effects

    def _node_dead(self, node: int, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for conn in sorted(c for c in self.replica.sessions if node_of(c) == node):
            self._ended.discard(conn)
            self._waiting.pop(conn, None)
            effects += self.replica.disconnect(conn, now)
        if node == self.id and not self.closed:  # we were taken for dead: our users are logged out
            for conn in sorted(self._local):
                effects += [Send((conn,), Error(Code.PROTOCOL, LOST)), Close(conn)]
        return effects

    def _transfer_id(self) -> str:
        """Transfer ids every node derives alike: a keyed hash of the entry and a counter."""
        self._transfers_in_entry += 1
        data = b"%s/%d" % (self._entry_raw, self._transfers_in_entry)
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:32]

    def _transfer_key(self) -> str:
        """The key of the transfer whose id was just drawn, derived alike on every node (the
        presenter's and the audience's nodes must hand out the same key) and secret as the
        cluster's secret is."""
        data = b"key/%s/%d" % (self._entry_raw, self._transfers_in_entry)
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def _take_over(self) -> None:
        """This node now holds the writer lease: write what the last writer may not have."""
        self.writer_epoch += 1
        self.share.take_over(self.logs.recover(), self._applied)  # recover cuts a torn last line


class SharedChat:
    """Stands where server.py expects its ``core.rules.Chat``.

    Requests and connection events go to the stream and come back as effects through
    ``Node.tick``; everything the server reads (``sessions`` and the rest) is the replica's.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node.replica, name)

    def connect(self, conn: int, ip: str) -> None:
        self._node.connect(conn, ip)

    def handle(self, conn: int, request: Request, now: float) -> list[Effect]:
        return self._node.request(conn, request)

    def disconnect(self, conn: int, now: float) -> list[Effect]:
        return self._node.disconnect(conn)

    def resume(self, conn: int, now: float) -> list[Effect]:
        self._node.resume(conn)
        return []

    @property
    def presence_version(self) -> object:
        # only the writer rewrites userlog.txt; a new writer rewrites it at once
        node = self._node
        return (node.writer_epoch, node.replica.presence_version) if node.is_writer() else None


class WriterLogs:
    """The server's logs as seen from a node: userlog.txt is the writer's alone."""

    def __init__(self, logs: Any, node: Node) -> None:
        self._logs = logs
        self._node = node
        self.append = logs.append  # once per log line: found here, not through __getattr__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logs, name)

    def write_userlog(self, content: str | memoryview) -> bool:
        """False when it could not be written (the server then refuses the logins it lists)."""
        return self._logs.write_userlog(content) if self._node.is_writer() else True

    def close(self) -> None:
        self._node.closed = True  # a stopping node writes nothing more, not even an empty userlog
        self._logs.close()

