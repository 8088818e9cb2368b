"""TESSENGER server: one selectors event loop around the pure chat core.

    python3 server.py SERVER_PORT NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS [options]
    python3 server.py --hash-password        # print a hashed credentials.txt entry

The loop only moves bytes. Each turn it reads what the ready sockets hold (one bounded read
per client), lets ``core.rules.Chat`` decide on a bounded number of each client's requests,
writes the turn's log lines (one write per file), then queues the replies and writes them at
once where the socket takes them, registering for writability only while output is pending
(the shape of Redis's networking layer).

Durability. A turn's log lines are handed to the kernel (``write``) before any reply of the
turn is queued, so an acknowledged message is in the page cache: it survives the server
process dying in any way, ``kill -9`` included. With ``--fsync`` the logs are also fsynced
(and a new log's directory entry with them) before the acknowledgements go out, so an
acknowledged message survives a power cut or an OS crash too. Either way a crash can leave
at most a torn last line, which the next start cuts off before numbering continues. A line
the disk refuses is taken back, and only the requests behind it get an error instead of
their acknowledgement; a login is welcomed only once ``userlog.txt`` lists it. When a
connection is read (flood control, full receivers) is decided in ``shell/connections.py``.
"""

from __future__ import annotations

import math
import resource
import selectors
import signal
import socket
import ssl
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from core import logformat, passwords
from core.admission import AddressLimits, Admission
from core.flood import TokenBucket
from core.framing import FrameDecoder, FrameError, encode as frame
from core.messages import Code, Error, Message, SchemaError, Welcome, encode, requests
from core.login_throttle import LoginThrottle
from core.rules import Announce, Append, Chat, Close, Effect, Hold, Send, parse_credentials, unusable_accounts
from shell.connections import LOGIN_FRAME, Batch, Connection, Limits, ReadControl
from shell.server_console import Console
from shell.logs import Logs
from shell import tls
from shell.startup import (
    collect_rarely, fail, hash_password, join_cluster, listen, parse_arguments, raise_file_limit,
)
from shell.tls import TLSTransport

if TYPE_CHECKING:
    from shell.cluster import Node as ClusterNode

# One flooding client cannot starve the rest: per turn it gets one read and at most
# FRAMES_PER_TURN of its requests handled; until its decoder holds no whole frame it is not
# read again, so what it sends meanwhile waits in the kernel, not in the server's memory.
READ_CHUNK = 64 * 1024
FRAMES_PER_TURN = 128
ACCEPTS_PER_TURN = 256
ACCEPT_PAUSE = 0.5  # seconds without accepting after accept() fails for want of resources
# userlog.txt is rewritten whole (SEQ renumbers when anyone leaves; from kept lines, core/userlog.py) at most
# once per interval, not once per login. A login is welcomed with the next rewrite, at once when none was
# made in the last interval; so the file is exact again at most one interval after the last change.
USERLOG_INTERVAL = 0.1

STORAGE_ERROR = "Error. The server cannot store messages right now."
LOGIN_STORAGE_ERROR = "Error. The server cannot record logins right now. Please try again later."
FULL = "Error. The server is full. Please try again later."
WAITING_FULL = "Error. Too many connections are waiting to log in. Please try again."
TLS_ONLY = frame(encode(Error(Code.PROTOCOL, "Error. This server accepts TLS connections only: connect with --tls.")))


class Server(ReadControl):
    def __init__(self, listener: socket.socket, chat: Chat, logs: Logs, limits: Limits, console: TextIO | None,
                 cluster: "ClusterNode | None" = None, tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.listener = listener
        self.tls_context = tls_context  # None: plain TCP
        self.selector = selectors.DefaultSelector()
        # --- cluster seam (--redis): the node's chat and logs stand in for this process's own
        self.cluster = cluster
        if cluster is not None:
            logs = cluster.attach(self.selector, logs)
            chat = cluster.chat
        self.chat = chat
        self.logs = logs
        self.limits = limits
        self.console = Console(console)
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: dict[int, Connection] = {}
        self.admission = Admission(limits.addresses)
        self.waiting = 0  # connections not logged in
        self.login_queue: deque[tuple[float, int]] = deque()  # (deadline, conn_id): connect order is deadline order
        self.next_id = 1 if cluster is None else cluster.first_conn_id  # ids unique cluster-wide
        self.now = time.time()
        self.accept_resume: float | None = None  # while accepting is paused: when to try again
        self.userlog_version = -1  # the presence written last
        self.userlog_written = -math.inf  # when
        self.userlog_interval = USERLOG_INTERVAL if cluster is None else 0.0  # a cluster's writer keeps its pace
        self._held: list[Batch] = []  # logins waiting for userlog.txt to list them
        self._backlog: dict[Connection, None] = {}  # read, and maybe holding whole frames not yet handled
        self._dirty: list[Connection] = []  # connections that got output this turn
        self._pressed: list[tuple[Connection, Connection]] = []  # (sender, receiver over --max-output)
        self._lines: list[str] = []  # console lines of this turn

    # --- the loop ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while True:
            self.turn(self._timeout())

    def turn(self, timeout: float | None) -> None:
        events = self.selector.select(timeout)
        self.now = now = time.time()
        batches: list[Batch] = []
        for key, mask in events:
            conn = key.data
            if conn is None:
                self._accept(now, batches)
                continue
            if conn is self.console:
                self._write_console()
                continue
            if type(conn) is not Connection:  # a Redis link of the cluster seam
                conn.handle_event(mask, now)
                continue
            if conn.handshaking:
                batches.append((conn, self._handshake(conn, now)))
                continue
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            if mask & selectors.EVENT_READ and conn.events & selectors.EVENT_READ and conn not in self._backlog:
                batches += self._receive(conn, now)
        for conn in list(self._backlog):
            self._handle(conn, now, batches)
        self._expire_logins(now, batches)
        self._run_timers(now, batches)
        if self.cluster is not None:  # what the shared chat decided, this node's share
            batches.append((None, self._count_cluster_logins(self.cluster.tick(now))))
        if self.accept_resume is not None and now >= self.accept_resume:
            self.accept_resume = None
            self.selector.register(self.listener, selectors.EVENT_READ)
        self._record_presence(now, batches)
        self._apply(batches, now)
        if self.cluster is not None:
            self.cluster.flush()  # after the turn's log lines are written

    def _timeout(self) -> float | None:
        if self._backlog:
            return 0.0  # requests are waiting: look at the sockets, but do not sleep
        deadlines = []
        if self.login_queue:
            deadlines.append(self.login_queue[0][0])
        if self.timers:
            deadlines.append(self.timers[0][0])
        if self.accept_resume is not None:
            deadlines.append(self.accept_resume)
        if self._held or self.chat.presence_version != self.userlog_version:
            deadlines.append(self.userlog_written + self.userlog_interval)
        if self.cluster is not None:
            deadlines.append(self.cluster.deadline())
        return max(0.0, min(deadlines) - time.time()) if deadlines else None

    # --- input ---------------------------------------------------------------------------

    def _accept(self, now: float, batches: list[Batch]) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while waiting to be accepted
                continue
            except OSError as exc:
                # out of descriptors or memory: the listener would stay readable and the loop
                # spin, so stop watching it for a moment and keep serving the others
                self._say(f"Cannot accept connections for now: {exc.strerror}")
                self.selector.unregister(self.listener)
                self.accept_resume = now + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ip = address[0]
            refusal = FULL if len(self.connections) >= self.limits.max_connections else self.admission.admit(ip, now)
            if refusal is not None:
                self._turn_away(sock, refusal)
                continue
            if self.waiting >= self.limits.max_waiting:
                self._evict_oldest_waiting(batches)
            limits = self.limits
            bucket = TokenBucket(limits.flood_rate, limits.flood_burst, now) if limits.flood_rate else None
            conn = Connection(sock, self.next_id, ip, FrameDecoder(limits.login_frame), bucket, now)
            if self.tls_context is not None:  # the login timeout bounds the handshake too
                conn.sock, conn.handshaking = TLSTransport(sock, accept=self.tls_context, refusal=TLS_ONLY), True
            self.next_id += 1
            self.connections[conn.conn_id] = conn
            self.waiting += 1
            self.login_queue.append((now + limits.login_timeout, conn.conn_id))
            self.chat.connect(conn.conn_id, ip)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _turn_away(self, sock: socket.socket, text: str) -> None:
        try:
            sock.send(frame(encode(Error(Code.PROTOCOL, text))))  # a fresh socket's buffer takes it whole
        except OSError:
            pass
        sock.close()

    def _evict_oldest_waiting(self, batches: list[Batch]) -> None:
        """Make room among the connections not logged in by closing the oldest of them."""
        while self.login_queue:
            _, conn_id = self.login_queue.popleft()
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closing and not conn.logged_in:
                batches.append((conn, self._reject(conn, WAITING_FULL)))
                return

    def _receive(self, conn: Connection, now: float) -> list[Batch]:
        """One read, into the decoder; the end of the stream ends the connection."""
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:  # reset by the peer: the same as a close
            data = b""
        if not data:
            # a peer that only shut down its sending side still gets the replies it asked for
            return [(conn, [Close(conn.conn_id)] if conn.out else self._drop(conn, now))]
        conn.decoder.append(data)
        self._backlog[conn] = None
        return []

    def _handle(self, conn: Connection, now: float, batches: list[Batch]) -> None:
        """Handle up to FRAMES_PER_TURN of the connection's requests, in order, within its budget;
        a bad frame is refused after every request before it was handled."""
        # looked up once per turn, not once per request: this loop is the relay's hot path
        handle = self.chat.handle
        decode = requests.decode
        conn_id = conn.conn_id
        bucket = conn.bucket
        decoder = conn.decoder
        try:
            payloads = decoder.take(FRAMES_PER_TURN)  # stops before a bad frame; the next take raises
        except FrameError as exc:
            batches.append((conn, self._reject(conn, f"Error. Bad frame: {exc}.")))
            return
        if len(payloads) < FRAMES_PER_TURN and not decoder.ready:
            del self._backlog[conn]  # all taken: read it again
            self._watch_partial_frame(conn, now, bool(payloads))
        for index, payload in enumerate(payloads):
            if bucket is not None:
                wait = bucket.wait(now)
                if wait:  # over its budget: not read until it has earned its next request
                    decoder.unread(payloads[index:])
                    self.pause_until(conn, now + wait)
                    return
                bucket.take()
            try:
                replies = handle(conn_id, decode(payload), now)
            except SchemaError as exc:
                replies = self._reject(conn, f"Error. Bad request: {exc}.")
            except Exception:  # a bug must cost one connection, never the server
                traceback.print_exc()
                replies = self._reject(conn, "Error. Internal server error.")
            if not conn.logged_in and self.chat.sessions[conn_id].username:
                decoder.unread(payloads[index + 1:])  # handled after its welcome
                self._logged_in(conn, replies)
                return
            batches.append((conn, replies))
            last = type(replies[-1]) if replies else None
            if last is Close:  # a Close is always the last effect of a request
                return  # whatever it sent after its own end is ignored
            if last is Hold:  # so is a Hold: the core finishes the request at its time
                decoder.unread(payloads[index + 1:])  # handled after the held one
                self._hold(conn, replies[-1].until)
                return

    def _hold(self, conn: Connection, until: float) -> None:
        """The core put a request off (rules.Hold): read and handle nothing of ``conn`` before
        ``until``, then let the core resume it."""
        conn.holds += 1
        self._at(until, conn, self._resume_held)
        self._stop_reading(conn)

    def _resume_held(self, conn: Connection, now: float) -> list[Effect]:
        conn.holds -= 1
        try:
            replies = self.chat.resume(conn.conn_id, now)
        except Exception:  # as in _handle: a bug costs one connection, never the server
            traceback.print_exc()
            return self._reject(conn, "Error. Internal server error.")
        if not conn.logged_in and self.chat.sessions[conn.conn_id].username:
            self._logged_in(conn, replies)  # its replies go out with the next userlog.txt
            return []
        last = type(replies[-1]) if replies else None
        if last is Hold:
            self._hold(conn, replies[-1].until)
        elif last is not Close:
            self._read_again(conn)  # what it sent meanwhile, then read it again
        return replies

    def _logged_in(self, conn: Connection, replies: list[Effect]) -> None:
        """A login: its replies wait until userlog.txt lists it, and so do its next requests,
        whose replies must come after its welcome."""
        self._count_login(conn)
        self._held.append((conn, replies))
        conn.holds += 1
        self._stop_reading(conn)

    def _count_login(self, conn: Connection) -> None:
        conn.logged_in = True
        conn.decoder.max_frame = self.limits.max_frame  # bigger frames from now on
        self.waiting -= 1
        self.admission.logged_in(conn.ip)

    def _count_cluster_logins(self, effects: list[Effect]) -> list[Effect]:
        """``effects``, its logins counted (a cluster's are decided in the shared chat, not in _handle)."""
        for effect in effects:
            if type(effect) is Send and type(effect.message) is Welcome:
                for conn_id in effect.conns:
                    conn = self.connections.get(conn_id)
                    if conn is not None and not conn.logged_in:
                        self._count_login(conn)
        return effects

    def _expire_logins(self, now: float, batches: list[Batch]) -> None:
        queue = self.login_queue
        while queue and queue[0][0] <= now:
            conn = self.connections.get(queue.popleft()[1])
            if conn is not None and not conn.closing and not conn.logged_in:
                batches.append((conn, self._reject(conn, "Error. Login timed out.")))

    # --- effects -------------------------------------------------------------------------

    def _apply(self, batches: list[Batch], now: float) -> None:
        logs = self.logs
        for _, effects in batches:
            for effect in effects:
                if type(effect) is Append:
                    logs.append(effect.log, effect.line)
        failed = logs.flush()  # every message is in its log before its acknowledgement is queued
        if failed:
            batches = self._unstored(batches, failed)
        self._lines += logs.events
        logs.events.clear()
        closes: list[int] = []
        queue = self._queue
        for sender, effects in batches:
            for effect in effects:
                kind = type(effect)  # effects are final classes; type() is the cheap dispatch
                if kind is Send:
                    queue(effect.conns, effect.message, sender)
                elif kind is Announce:
                    self._lines.append(effect.line)
                elif kind is Close:
                    closes.append(effect.conn)
        for conn_id in closes:
            conn = self.connections.get(conn_id)
            if conn is not None:
                conn.closing = True  # no more reading: its next bytes would come after its end
                self._backlog.pop(conn, None)
                self._dirty.append(conn)
        self._flush_output(now)
        if self._pressed:
            self._hold_senders()
        self._print_lines()

    def _unstored(self, batches: list[Batch], failed: set[str]) -> list[Batch]:
        """The requests whose lines the disk refused get an error instead of their effects;
        the core takes the lines back, so numbering stays contiguous."""
        for log in failed:
            lines = [e.line for _, effects in batches for e in effects if type(e) is Append and e.log == log]
            self.chat.unstored(log, lines)
        result: list[Batch] = []
        for sender, effects in batches:
            if sender is not None and any(type(e) is Append and e.log in failed for e in effects):
                effects = [Send((sender.conn_id,), Error(Code.COMMAND, STORAGE_ERROR)),
                           *[e for e in effects if type(e) is Close]]
            result.append((sender, effects))
        return result

    def _queue(self, conn_ids: tuple[int, ...], message: Message, sender: Connection | None) -> None:
        if not conn_ids:
            return
        data = frame(encode(message))  # encoded once, however many receive it
        max_output = self.limits.max_output
        for conn_id in conn_ids:
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closing:
                conn.out += data
                self._dirty.append(conn)
                if len(conn.out) > max_output and sender is not None:
                    self._pressed.append((sender, conn))  # judged once the turn's output is written

    def _flush_output(self, now: float) -> None:
        """Write what this turn queued; close finished and overflowing connections."""
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            effects: list[Effect] = []
            for conn in dict.fromkeys(dirty):
                if conn.conn_id not in self.connections:
                    continue
                self._write(conn)  # at once; the selector only waits for what the socket refused
                if conn.closing and not conn.out:
                    effects += self._drop(conn, now)
                elif len(conn.out) > self.limits.login_output and not conn.logged_in:
                    self._say(f"{self._name(conn)} does not read its replies ({len(conn.out)} bytes unsent "
                              "before logging in); disconnecting it")
                    effects += self._drop(conn, now)
                elif len(conn.out) > self.limits.max_output and not conn.over:
                    conn.over = True  # cut off only if it also takes nothing for --stall-timeout
                    conn.progress = now
                    self._at(now + self.limits.stall_timeout, conn, self._check_stall)
            # a drop may announce a logout; it sends nothing, but keep the rule general
            for effect in effects:
                if isinstance(effect, Announce):
                    self._lines.append(effect.line)
                elif isinstance(effect, Send):
                    self._queue(effect.conns, effect.message, None)

    def _check_stall(self, conn: Connection, now: float) -> list[Effect]:
        if len(conn.out) <= self.limits.max_output:
            conn.over = False
            return []
        if now - conn.progress < self.limits.stall_timeout:  # it took some meanwhile
            self._at(conn.progress + self.limits.stall_timeout, conn, self._check_stall)
            return []
        self._say(f"{self._name(conn)} stopped reading ({len(conn.out)} bytes unsent); disconnecting it")
        return self._drop(conn, now)

    def _write(self, conn: Connection) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                conn.out.clear()  # the peer is gone; the read side will see it
                conn.closing = True
                sent = 0
            if sent:
                del conn.out[:sent]
                conn.progress = self.now
                if conn.waiters and len(conn.out) <= self.limits.max_output:
                    self._release_waiters(conn)
        if conn.closing and not conn.out:
            self._dirty.append(conn)  # finished: dropped by _flush_output
            return
        self._watch(conn)

    def _drop(self, conn: Connection, now: float) -> list[Effect]:
        """Forget a connection at once; a logged-in user is logged out."""
        if self.connections.pop(conn.conn_id, None) is None:
            return []
        self._backlog.pop(conn, None)
        if conn.events:
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.out = bytearray()
        self.admission.closed(conn.ip, conn.logged_in)
        if not conn.logged_in:
            self.waiting -= 1
        self._release_waiters(conn)  # its senders need not wait for it any more
        return self.chat.disconnect(conn.conn_id, now)

    # --- presence ------------------------------------------------------------------------

    def _record_presence(self, now: float, batches: list[Batch]) -> None:
        """Rewrite userlog.txt when presence changed, at most once per USERLOG_INTERVAL; welcome
        the logins it now lists, or refuse them when it cannot be written."""
        if not self._held and self.chat.presence_version == self.userlog_version:
            return
        if now < self.userlog_written + self.userlog_interval:
            return
        version = self.chat.presence_version
        held, self._held = self._held, []
        self.userlog_written = now
        if self.logs.write_userlog(self.chat.userlog()):
            self.userlog_version = version
            batches += held
        else:
            for conn, _ in held:
                self._say(f"{self._name(conn)} cannot log in: userlog.txt cannot be written")
                self.chat.disconnect(conn.conn_id, now)  # never welcomed: no logout to tell
                batches.append((conn, self._reject(conn, LOGIN_STORAGE_ERROR)))
        for conn, _ in held:
            self._release(conn)

    # --- the console ---------------------------------------------------------------------

    def _name(self, conn: Connection) -> str:
        session = self.chat.sessions.get(conn.conn_id)
        username = session.username if session is not None else None
        return username if username is not None else f"connection {conn.conn_id}"

    def _say(self, line: str) -> None:
        self._lines.append(line)

    def _print_lines(self) -> None:
        if self._lines:
            self.console.say(self._lines)
            self._lines.clear()
            self._write_console()

    def _write_console(self) -> None:
        self.console.write_watched(self.selector)

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            conn.sock.close()
        self.connections.clear()
        self.listener.close()
        self.logs.close()
        self.logs.write_userlog("")
        self.console.write()
        self.console.close()
        if self.cluster is not None:
            self.cluster.shutdown()

def load_accounts(path: Path) -> dict[str, str]:
    try:
        accounts = parse_credentials(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"Cannot read {path}: {exc.strerror}")
    except (UnicodeDecodeError, ValueError) as exc:
        fail(f"Cannot read {path}: {exc}")
    for problem in unusable_accounts(accounts):
        print(f"Warning: in {path}, {problem}", file=sys.stderr)
    for username, stored in accounts.items():
        if passwords.malformed_hash(stored):  # name the account, never the password
            print(f"Warning: the password of {username} in {path} starts with {passwords.PREFIX!r} but is "
                  "no valid hash entry; it is taken as a plain password", file=sys.stderr)
    return accounts


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    if args.hash_password:
        return hash_password(args.hash_cost)
    data_dir = Path(args.data_dir)
    accounts = load_accounts(Path(args.credentials) if args.credentials else data_dir / "credentials.txt")
    logs = Logs(data_dir, args.fsync)
    try:
        history = logs.recover()
    except OSError as exc:
        fail(f"Cannot use the data directory {data_dir}: {exc.strerror}")
    if not args.redis and not logs.write_userlog(""):  # a cluster's userlog.txt is its log writer's to write
        fail(f"Cannot use the data directory {data_dir}: {logs.failing[logformat.USERLOG]}")
    max_connections = raise_file_limit(args.max_connections)
    if max_connections < 1:
        fail(f"The open-file limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) leaves no room for connections")
    if max_connections < args.max_connections:
        print(f"Serving at most {max_connections} connections: the open-file limit allows no more", file=sys.stderr)
    limits = Limits(args.max_frame, min(LOGIN_FRAME, args.max_frame), args.login_timeout, args.max_output,
                    max_connections, args.stall_timeout, args.frame_timeout, args.flood_rate, args.flood_burst,
                    max_waiting=args.max_waiting,
                    addresses=AddressLimits(args.per_address, args.per_address_waiting, args.per_address_rate))

    def new_chat(accounts: dict[str, str], history: dict[str, int], **more: Any) -> Chat:
        return Chat(accounts, args.attempts, block_seconds=args.block_seconds, history=history,
                    login_throttle=LoginThrottle(args.failed_login_burst, args.failed_login_rate),
                    max_groups_per_user=args.max_groups_per_user, max_groups=args.max_groups, **more)

    try:
        context, fingerprint = tls.server_context(args.tls_cert, args.tls_key) if args.tls_cert else (None, "")
    except tls.TLSSetupError as exc:
        fail(str(exc))
    cluster = join_cluster(args, accounts, history, new_chat) if args.redis else None
    listener = listen(args.host, args.port, args.reuse_port)
    server = Server(listener, new_chat(accounts, history), logs, limits, None if args.quiet else sys.stdout, cluster,
                    context)
    host, port = listener.getsockname()
    print(f"TESSENGER server listening on {host}:{port} ({len(accounts)} accounts, "
          f"{args.attempts} attempts before blocking)", flush=True)
    print(f"TLS only; certificate SHA-256 fingerprint {fingerprint}" if context else
          "Not encrypted: passwords and messages cross the network in clear (use --tls-cert/--tls-key)", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # same clean stop as Ctrl-C
    status = 0
    collect_rarely()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.console.say(["Server shutting down"])  # through the console: it never blocks
    except OSError as exc:  # e.g. a full disk: stop rather than acknowledge what is not logged
        print(f"Server stopped: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        try:
            server.shutdown()
        except OSError as exc:
            print(f"Server stopped uncleanly: {exc}", file=sys.stderr, flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
