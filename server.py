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
at most a torn last line, which the next start cuts off before numbering continues.
"""

from __future__ import annotations

import argparse
import gc
import getpass
import heapq
import math
import os
import resource
import selectors
import signal
import socket
import ssl
import sys
import time
import traceback
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TextIO

from core import logformat, passwords
from core.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, encode as frame
from core.messages import MAX_PASSWORD, Code, Error, Message, SchemaError, encode, requests, valid_password
from core.login_throttle import DEFAULT_BURST, DEFAULT_RATE, LoginThrottle
from core.rules import (
    DEFAULT_MAX_GROUPS, DEFAULT_MAX_GROUPS_PER_USER, Announce, Append, Chat, Close, Effect, Hold, Send,
    parse_credentials, unusable_accounts,
)
from shell import tls
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
LOGIN_FRAME = 4096  # frames before login are small: a username and a password
MAX_OPEN_LOGS = 64  # groups are unbounded in number; the log files held open must not be
RESERVED_FDS = MAX_OPEN_LOGS + 32  # descriptors no connection may take: logs, userlog, stdio, selector
GC_THRESHOLD = 100_000  # allocations between cycle collections (CPython's default: 700)


@dataclass
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME
    login_frame: int = LOGIN_FRAME
    login_timeout: float = 60.0
    max_output: int = 1024 * 1024
    max_connections: int = 10_000


@dataclass(eq=False)
class Connection:
    sock: socket.socket | TLSTransport
    conn_id: int
    decoder: FrameDecoder
    login_deadline: float
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once ``out`` is written; read no more
    held: bool = False  # read nothing, handle nothing until the core's Hold ends
    events: int = selectors.EVENT_READ  # what the selector watches for
    handshaking: bool = False  # TLS: the handshake runs before anything is read


class Logs:
    """The message logs: repaired and scanned at start, appended once per file per turn."""

    def __init__(self, directory: Path, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        self._files: dict[str, TextIO] = {}  # open logs, least recently written first
        self._pending: defaultdict[str, list[str]] = defaultdict(list)

    def recover(self) -> dict[str, int]:
        """Cut torn last lines left by a crash; return each log's last message number."""
        history: dict[str, int] = {}
        for path in self.directory.iterdir():
            if path.name != logformat.MESSAGELOG and logformat.group_of_log(path.name) is None:
                continue
            with open(path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                offset = max(0, size - logformat.TAIL_BYTES)
                f.seek(offset)
                scan = logformat.scan_log(f.read(), offset)
                if scan.whole_length < size:
                    f.truncate(scan.whole_length)
            history[path.name] = scan.last_number
        return history

    def append(self, log: str, line: str) -> None:
        self._pending[log].append(line)

    def flush(self) -> None:
        """Write the turn's lines, one write per file, before any reply leaves."""
        # taken before writing: a flush cut short (a signal, a full disk) is never repeated
        # by the flush at shutdown, which would write its lines twice
        pending, self._pending = self._pending, defaultdict(list)
        for log, lines in pending.items():
            f = self._open(log)
            f.write("".join(lines))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def _open(self, log: str) -> TextIO:
        f = self._files.pop(log, None)
        if f is None:
            if len(self._files) >= MAX_OPEN_LOGS:
                self._files.pop(next(iter(self._files))).close()
            f = open(self.directory / log, "a", encoding="utf-8", newline="\n")
            if self.fsync:
                self._sync_directory()  # a new file's name must survive a power cut as well
        self._files[log] = f  # now the most recently written
        return f

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def write_userlog(self, content: str) -> None:
        """Replace ``userlog.txt`` atomically: a reader sees the old file or the new one."""
        target = self.directory / logformat.USERLOG
        temporary = target.with_name(logformat.USERLOG + ".tmp")
        temporary.write_text(content, encoding="utf-8", newline="\n")
        os.replace(temporary, target)


class Server:
    def __init__(self, listener: socket.socket, chat: Chat, logs: Logs, limits: Limits, console: TextIO | None,
                 cluster: "ClusterNode | None" = None, tls_context: ssl.SSLContext | None = None) -> None:
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
        self.console = console
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: dict[int, Connection] = {}
        self.login_queue: deque[Connection] = deque()  # connect order is deadline order
        self.next_id = 1 if cluster is None else cluster.first_conn_id  # ids unique cluster-wide
        self.userlog_version = -1
        self.accept_resume: float | None = None  # while accepting is paused: when to try again
        self._backlog: dict[Connection, None] = {}  # read, and maybe holding whole frames not yet handled
        self._holds: list[tuple[float, int, Connection]] = []  # a heap of (until, id, connection)
        self._dirty: list[Connection] = []  # connections that got output this turn
        self._lines: list[str] = []  # console lines of this turn

    # --- the loop ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while True:
            self.turn(self._timeout())

    def turn(self, timeout: float | None) -> None:
        events = self.selector.select(timeout)
        now = time.time()
        effects: list[Effect] = []
        for key, mask in events:
            conn: Connection | None = key.data
            if conn is None:
                self._accept(now)
                continue
            if type(conn) is not Connection:  # a Redis link of the cluster seam
                conn.handle_event(mask, now)
                continue
            if conn.handshaking:
                effects += self._handshake(conn, now)
                continue
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            if mask & selectors.EVENT_READ and not conn.closing and conn not in self._backlog:
                effects += self._receive(conn, now)
        effects += self._release_holds(now)
        for conn in list(self._backlog):
            effects += self._handle(conn, now)
        effects += self._expire_logins(now)
        if self.cluster is not None:
            effects += self.cluster.tick(now)  # what the shared chat decided, this node's share
        if self.accept_resume is not None and now >= self.accept_resume:
            self.accept_resume = None
            self.selector.register(self.listener, selectors.EVENT_READ)
        self._apply(effects, now)
        if self.cluster is not None:
            self.cluster.flush()  # after the turn's log lines are written

    def _timeout(self) -> float | None:
        if self._backlog:
            return 0.0  # requests are waiting: look at the sockets, but do not sleep
        while self.login_queue and self.login_queue[0].conn_id not in self.connections:
            self.login_queue.popleft()
        deadlines = [self.login_queue[0].login_deadline] if self.login_queue else []
        if self._holds:
            deadlines.append(self._holds[0][0])
        if self.accept_resume is not None:
            deadlines.append(self.accept_resume)
        if self.cluster is not None:
            deadlines.append(self.cluster.deadline())
        return max(0.0, min(deadlines) - time.time()) if deadlines else None

    # --- input ---------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
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
            if len(self.connections) >= self.limits.max_connections:
                self._turn_away(sock)
                continue
            conn = Connection(sock, self.next_id, FrameDecoder(self.limits.login_frame), now + self.limits.login_timeout)
            if self.tls_context is not None:  # the login timeout bounds the handshake too
                conn.sock, conn.handshaking = TLSTransport(sock, accept=self.tls_context, refusal=TLS_ONLY), True
            self.next_id += 1
            self.connections[conn.conn_id] = conn
            self.login_queue.append(conn)
            self.chat.connect(conn.conn_id, address[0])
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _turn_away(self, sock: socket.socket) -> None:
        reply = frame(encode(Error(Code.PROTOCOL, "Error. The server is full. Please try again later.")))
        try:
            sock.send(reply)  # a fresh socket's buffer takes it whole
        except OSError:
            pass
        sock.close()

    def _handshake(self, conn: Connection, now: float) -> list[Effect]:
        """One step of a TLS handshake, on readiness; a failed one costs only its connection."""
        try:
            events = conn.sock.handshake() or selectors.EVENT_READ
        except OSError:  # a plain client (it was told), a stray peer, a broken handshake
            return self._drop(conn, now)
        conn.handshaking = conn.sock.handshaking
        if events != conn.events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events
        return []

    def _receive(self, conn: Connection, now: float) -> list[Effect]:
        """One read, into the decoder; the end of the stream ends the connection."""
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:  # reset by the peer: the same as a close
            data = b""
        if not data:
            # a peer that only shut down its sending side still gets the replies it asked for
            return [Close(conn.conn_id)] if conn.out else self._drop(conn, now)
        conn.decoder.append(data)
        self._backlog[conn] = None
        return []

    def _handle(self, conn: Connection, now: float) -> list[Effect]:
        """Handle up to FRAMES_PER_TURN of the connection's requests, in order.

        A bad frame is refused only after every request before it was handled (``take``
        stops before it; the next turn's ``take`` raises), and the larger frame limit applies
        from the first frame after the login that ``take`` has not yet reached.
        """
        effects: list[Effect] = []
        # looked up once per turn, not once per request: this loop is the relay's hot path
        handle = self.chat.handle
        decode = requests.decode
        conn_id = conn.conn_id
        decoder = conn.decoder
        try:
            payloads = decoder.take(FRAMES_PER_TURN)
        except FrameError as exc:
            return self._reject(conn, f"Error. Bad frame: {exc}.")
        if len(payloads) < FRAMES_PER_TURN and not decoder.ready:
            del self._backlog[conn]  # all taken: read it again
        for index, payload in enumerate(payloads):
            try:
                replies = handle(conn_id, decode(payload), now)
            except SchemaError as exc:
                replies = self._reject(conn, f"Error. Bad request: {exc}.")
            except Exception:  # a bug must cost one connection, never the server
                traceback.print_exc()
                replies = self._reject(conn, "Error. Internal server error.")
            effects += replies
            last = type(replies[-1]) if replies else None
            if last is Close:  # a Close is always the last effect of a request
                break  # whatever it sent after its own end is ignored
            if last is Hold:  # so is a Hold
                self._hold(conn, replies[-1].until)
                decoder.unread(payloads[index + 1:])  # handled after the held one
                break
            if decoder.max_frame < self.limits.max_frame and self.chat.sessions[conn_id].username:
                decoder.max_frame = self.limits.max_frame
        return effects

    def _hold(self, conn: Connection, until: float) -> None:
        """Stop reading and handling ``conn`` until ``until`` (see rules.Hold)."""
        conn.held = True
        self._backlog.pop(conn, None)
        heapq.heappush(self._holds, (until, conn.conn_id, conn))
        self._write(conn)  # watch it no more for reading

    def _release_holds(self, now: float) -> list[Effect]:
        """Hand the core the requests it held whose time has come; read their connections again."""
        effects: list[Effect] = []
        while self._holds and self._holds[0][0] <= now:
            conn = heapq.heappop(self._holds)[2]
            if conn.conn_id not in self.connections or conn.closing:
                continue
            conn.held = False
            try:
                replies = self.chat.resume(conn.conn_id, now)
            except Exception:  # as in _handle: a bug costs one connection, never the server
                traceback.print_exc()
                replies = self._reject(conn, "Error. Internal server error.")
            effects += replies
            if replies and type(replies[-1]) is Hold:
                self._hold(conn, replies[-1].until)
            elif not (replies and type(replies[-1]) is Close):
                self._backlog[conn] = None  # what it sent meanwhile, then read it again
                self._write(conn)
        return effects

    def _reject(self, conn: Connection, text: str) -> list[Effect]:
        return [Send((conn.conn_id,), Error(Code.PROTOCOL, text)), Close(conn.conn_id)]

    def _expire_logins(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        queue = self.login_queue
        while queue and queue[0].login_deadline <= now:
            conn = queue.popleft()
            session = self.chat.sessions.get(conn.conn_id)
            if conn.conn_id in self.connections and session is not None and session.username is None:
                effects += self._reject(conn, "Error. Login timed out.")
        return effects

    # --- effects -------------------------------------------------------------------------

    def _apply(self, effects: list[Effect], now: float) -> None:
        closes: list[int] = []
        sends: list[Send] = []
        log = self.logs.append
        for effect in effects:
            kind = type(effect)  # effects are final classes; type() is the cheap dispatch
            if kind is Send:
                sends.append(effect)
            elif kind is Append:
                log(effect.log, effect.line)
            elif kind is Announce:
                self._lines.append(effect.line)
            elif kind is Close:
                closes.append(effect.conn)
        self.logs.flush()  # every message is in its log before its acknowledgement is queued
        queue = self._queue
        for send in sends:
            queue(send.conns, send.message)
        for conn_id in closes:
            conn = self.connections.get(conn_id)
            if conn is not None:
                conn.closing = True  # no more reading: its next bytes would come after its end
                self._backlog.pop(conn, None)
                self._dirty.append(conn)
        self._flush_output(now)
        if self.chat.presence_version != self.userlog_version:
            self.userlog_version = self.chat.presence_version
            self.logs.write_userlog(self.chat.userlog())
        self._print_lines()

    def _queue(self, conn_ids: tuple[int, ...], message: Message) -> None:
        if not conn_ids:
            return
        data = frame(encode(message))  # encoded once, however many receive it
        for conn_id in conn_ids:
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closing:
                conn.out += data
                self._dirty.append(conn)

    def _flush_output(self, now: float) -> None:
        """Write what this turn queued; close finished and overflowing connections."""
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            effects: list[Effect] = []
            for conn in dict.fromkeys(dirty):
                if conn.conn_id not in self.connections:
                    continue
                self._write(conn)  # at once; the selector only waits for what the socket refused
                if len(conn.out) > self.limits.max_output:
                    self._say(f"{self._name(conn)} stopped reading ({len(conn.out)} bytes unsent); disconnecting it")
                    effects += self._drop(conn, now)
                elif conn.closing and not conn.out:
                    effects += self._drop(conn, now)
            # a drop may announce a logout; it sends nothing, but keep the rule general
            for effect in effects:
                if isinstance(effect, Announce):
                    self._lines.append(effect.line)
                elif isinstance(effect, Send):
                    self._queue(effect.conns, effect.message)

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
            del conn.out[:sent]
        if conn.closing and not conn.out:
            self._dirty.append(conn)  # finished: dropped by _flush_output
            return
        events = (0 if conn.closing or conn.held else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.out else 0)
        if events != conn.events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _drop(self, conn: Connection, now: float) -> list[Effect]:
        """Forget a connection; a logged-in user is logged out."""
        if self.connections.pop(conn.conn_id, None) is None:
            return []
        self._backlog.pop(conn, None)
        self.selector.unregister(conn.sock)
        conn.sock.close()
        return self.chat.disconnect(conn.conn_id, now)

    def _name(self, conn: Connection) -> str:
        session = self.chat.sessions.get(conn.conn_id)
        username = session.username if session is not None else None
        return username if username is not None else f"connection {conn.conn_id}"

    def _say(self, line: str) -> None:
        self._lines.append(line)

    def _print_lines(self) -> None:
        if self._lines and self.console is not None:
            try:
                self.console.write("\n".join(self._lines) + "\n")
                self.console.flush()
            except OSError:  # the terminal is gone (EIO, EPIPE): serving matters more than printing
                self.console = None
        self._lines.clear()

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            conn.sock.close()
        self.connections.clear()
        self.listener.close()
        self.logs.close()
        self.logs.write_userlog("")
        if self.cluster is not None:
            self.cluster.shutdown()


# --- start-up ----------------------------------------------------------------------------

USAGE = "python3 server.py SERVER_PORT NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS [options]"
TLS_ONLY = frame(encode(Error(Code.PROTOCOL, "Error. This server accepts TLS connections only: connect with --tls.")))


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"Error: {message}. Usage: {USAGE}")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(2)


def at_least(kind: type[int] | type[float], low: float) -> Callable[[str], int | float]:
    """An argparse type: a finite number of ``kind`` no smaller than ``low``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {low:g}")
        return value

    return parse


def power_of_two(text: str) -> int:
    value = at_least(int, 2)(text)
    if value & (value - 1) or value > passwords.MAX_N:
        raise argparse.ArgumentTypeError(f"{text!r} is not a power of two up to {passwords.MAX_N}")
    return value


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="server.py", description="TESSENGER chat server.")
    parser.add_argument("port", metavar="SERVER_PORT", nargs="?", help="TCP port to listen on (0: let the OS choose)")
    parser.add_argument("attempts", metavar="NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS", nargs="?",
                        help="failed logins in a row that block an account (1 to 5)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all interfaces)")
    parser.add_argument("--data-dir", default=".", help="where credentials.txt and the logs live (default: .)")
    parser.add_argument("--credentials", help="accounts file (default: DATA_DIR/credentials.txt)")
    parser.add_argument("--block-seconds", type=at_least(float, 0), default=10.0,
                        help="how long a blocked account stays blocked (default: 10)")
    parser.add_argument("--max-frame", type=at_least(int, 1024), default=DEFAULT_MAX_FRAME,
                        help=f"largest frame accepted, bytes (default: {DEFAULT_MAX_FRAME}; "
                             f"at most {LOGIN_FRAME} before login)")
    parser.add_argument("--login-timeout", type=at_least(float, 0.001), default=60.0,
                        help="seconds a connection has to log in (default: 60)")
    parser.add_argument("--max-output", type=at_least(int, 1024), default=1024 * 1024,
                        help="unsent reply bytes after which a client that stopped reading is dropped and logged out "
                             "(default: 1048576)")
    parser.add_argument("--max-connections", type=at_least(int, 1), default=10_000,
                        help="connections served at once; one more gets an error and is closed (default: 10000)")
    parser.add_argument("--failed-login-burst", type=at_least(int, 1), default=DEFAULT_BURST,
                        help=f"failed logins one address may make at once (default: {DEFAULT_BURST})")
    parser.add_argument("--failed-login-rate", type=at_least(float, 0), default=DEFAULT_RATE,
                        help=f"failed logins per second one address may make after that; its further logins "
                             f"wait their turn (default: {DEFAULT_RATE:g}; 0: no limit)")
    parser.add_argument("--max-groups-per-user", type=at_least(int, 0), default=DEFAULT_MAX_GROUPS_PER_USER,
                        help=f"groups one user may create (default: {DEFAULT_MAX_GROUPS_PER_USER})")
    parser.add_argument("--max-groups", type=at_least(int, 0), default=DEFAULT_MAX_GROUPS,
                        help=f"groups the server holds at most (default: {DEFAULT_MAX_GROUPS})")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync the logs every turn before acknowledging: messages survive a power cut")
    parser.add_argument("--quiet", action="store_true", help="print nothing but start-up errors")
    parser.add_argument("--redis", metavar="URL",
                        help="run as a node of the cluster sharing redis://HOST:PORT/DB (needs hiredis; see README)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="listen with SO_REUSEPORT, so several nodes on one host share SERVER_PORT")
    parser.add_argument("--hash-password", action="store_true",
                        help="read a password (without echo on a terminal, else one line of stdin), "
                             "print its hashed entry for credentials.txt and exit")
    parser.add_argument("--hash-cost", type=power_of_two, default=passwords.DEFAULT_N,
                        help=f"scrypt N for --hash-password (default: {passwords.DEFAULT_N}); "
                             "every login with the entry stalls the server in proportion")
    tls.add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.hash_password:
        return args
    missing = [name for name, value in (("SERVER_PORT", args.port), ("NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS", args.attempts))
               if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    attempts = args.attempts
    if not (attempts.isdigit() and 1 <= int(attempts) <= 5):
        fail(f"Invalid number of allowed failed consecutive attempt: {attempts}. "
             "The valid value of argument number is an integer between 1 and 5")
    args.attempts = int(attempts)
    if not (args.port.isdigit() and int(args.port) <= 65535):
        fail(f"Invalid port: {args.port}. The port must be an integer between 0 and 65535")
    args.port = int(args.port)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    return args


def hash_password(cost: int) -> int:
    """``--hash-password``: read a password, print its ``credentials.txt`` entry."""
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat the password: ") != password:
                fail("The passwords differ.")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):
        fail("No password given.")
    if not valid_password(password):
        fail(f"A password is 1 to {MAX_PASSWORD} printable characters without spaces.")
    print(passwords.hash_entry(password, n=cost))
    return 0


def raise_file_limit(wanted: int) -> int:
    """Raise the open-file soft limit so ``wanted`` connections fit, as far as the hard limit
    allows; return how many connections fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + RESERVED_FDS
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            pass
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - RESERVED_FDS)


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # the kernel spreads new connections over every node listening on the port
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        fail(f"Cannot listen on {host}:{port}: {exc.strerror}")
    listener.listen(1024)
    listener.setblocking(False)
    return listener


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


def collect_rarely() -> None:
    """Let the cycle collector run rarely, and never over the start-up's objects.

    What the loop allocates dies by reference count (messages, effects, frames hold no
    cycles), but one turn of the relay keeps tens of thousands of them alive until its
    replies are queued. At the default threshold (700) the collector ran dozens of times a
    turn, each time promoting the live ones, which soon made it scan the whole heap.
    """
    gc.freeze()  # everything made so far is permanent: no collection looks at it again
    gc.set_threshold(GC_THRESHOLD, 50, 100)


def join_cluster(args: argparse.Namespace, accounts: dict[str, str], history: dict[str, int],
                 new_chat: Callable[..., Chat]) -> "ClusterNode":
    """The cluster seam: start as a node (one bounded, blocking exchange with Redis before the loop)."""
    try:
        from shell import cluster  # the optional extra: hiredis
    except ImportError:
        fail("The cluster mode (--redis) needs hiredis: pip install '.[cluster]' (or pip install hiredis)")
    # what every node must agree on for the rules to decide alike
    rules = [args.attempts, args.block_seconds, args.failed_login_burst, args.failed_login_rate,
             args.max_groups_per_user, args.max_groups]
    try:
        return cluster.start(args.redis, accounts, rules, history, new_chat)
    except cluster.ClusterError as exc:
        fail(str(exc))


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    if args.hash_password:
        return hash_password(args.hash_cost)
    data_dir = Path(args.data_dir)
    accounts = load_accounts(Path(args.credentials) if args.credentials else data_dir / "credentials.txt")
    logs = Logs(data_dir, args.fsync)
    try:
        history = logs.recover()
        if not args.redis:  # a cluster's userlog.txt is its log writer's to write
            logs.write_userlog("")
    except OSError as exc:
        fail(f"Cannot use the data directory {data_dir}: {exc.strerror}")
    max_connections = raise_file_limit(args.max_connections)
    if max_connections < 1:
        fail(f"The open-file limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) leaves no room for connections")
    if max_connections < args.max_connections:
        print(f"Serving at most {max_connections} connections: the open-file limit allows no more", file=sys.stderr)
    limits = Limits(args.max_frame, min(LOGIN_FRAME, args.max_frame), args.login_timeout, args.max_output,
                    max_connections)
    try:
        context, fingerprint = tls.server_context(args.tls_cert, args.tls_key) if args.tls_cert else (None, "")
    except tls.TLSSetupError as exc:
        fail(str(exc))
    def new_chat(accounts: dict[str, str], history: dict[str, int], **more: Any) -> Chat:
        return Chat(accounts, args.attempts, block_seconds=args.block_seconds, history=history,
                    login_throttle=LoginThrottle(args.failed_login_burst, args.failed_login_rate),
                    max_groups_per_user=args.max_groups_per_user, max_groups=args.max_groups, **more)

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
        print("Server shutting down", flush=True)
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
