"""TESSENGER server: one selectors event loop around the pure chat core.

    python3 server.py SERVER_PORT NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS [options]

The loop only moves bytes. Each turn it reads what the ready sockets hold (bounded per
client), lets ``core.rules.Chat`` decide, writes the turn's log lines (one write per file),
then queues the replies and writes them at once where the socket takes them, registering
for writability only while output is pending (the shape of Redis's networking layer).
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

from core import logformat
from core.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, encode as frame
from core.messages import Error, Message, SchemaError, encode, requests
from core.rules import Announce, Append, Chat, Close, Code, Effect, Send, parse_credentials

READ_CHUNK = 64 * 1024  # the most read from one client per turn: one flooding client cannot starve the rest
ACCEPTS_PER_TURN = 256


@dataclass
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME
    login_frame: int = 4096  # frames before login are small: a username and a password
    login_timeout: float = 60.0
    max_output: int = 1024 * 1024
    max_connections: int = 10_000


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    conn_id: int
    decoder: FrameDecoder
    login_deadline: float
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once ``out`` is written; read no more
    events: int = selectors.EVENT_READ  # what the selector watches for


class Logs:
    """The message logs: repaired and scanned at start, appended once per file per turn."""

    def __init__(self, directory: Path, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        self._files: dict[str, TextIO] = {}
        self._pending: dict[str, list[str]] = {}

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
        self._pending.setdefault(log, []).append(line)

    def flush(self) -> None:
        """Write the turn's lines, one write per file, before any reply leaves."""
        for log, lines in self._pending.items():
            f = self._files.get(log)
            if f is None:
                f = self._files[log] = open(self.directory / log, "a", encoding="utf-8", newline="\n")
            f.write("".join(lines))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._pending.clear()

    def write_userlog(self, content: str) -> None:
        """Replace ``userlog.txt`` atomically: a reader sees the old file or the new one."""
        target = self.directory / logformat.USERLOG
        temporary = target.with_name(logformat.USERLOG + ".tmp")
        temporary.write_text(content, encoding="utf-8", newline="\n")
        os.replace(temporary, target)


class Server:
    def __init__(self, listener: socket.socket, chat: Chat, logs: Logs, limits: Limits, console: TextIO | None) -> None:
        self.listener = listener
        self.chat = chat
        self.logs = logs
        self.limits = limits
        self.console = console
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: dict[int, Connection] = {}
        self.login_queue: deque[Connection] = deque()  # connect order is deadline order
        self.next_id = 1
        self.userlog_version = -1
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
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            if mask & selectors.EVENT_READ and not conn.closing:
                effects += self._read(conn, now)
        effects += self._expire_logins(now)
        self._apply(effects, now)

    def _timeout(self) -> float | None:
        while self.login_queue and self.login_queue[0].conn_id not in self.connections:
            self.login_queue.popleft()
        if not self.login_queue:
            return None
        return max(0.0, self.login_queue[0].login_deadline - time.time())

    # --- input ---------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                self._say(f"accept failed: {exc.strerror}")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.connections) >= self.limits.max_connections:
                self._turn_away(sock)
                continue
            conn = Connection(sock, self.next_id, FrameDecoder(self.limits.login_frame), now + self.limits.login_timeout)
            self.next_id += 1
            self.connections[conn.conn_id] = conn
            self.login_queue.append(conn)
            self.chat.connect(conn.conn_id, address[0])
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _turn_away(self, sock: socket.socket) -> None:
        reply = frame(encode(Error(Code.PROTOCOL, "Error. The server is full. Please try again later.")))
        try:
            sock.send(reply)
        except OSError:
            pass
        sock.close()

    def _read(self, conn: Connection, now: float) -> list[Effect]:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            return self._drop(conn, now)
        try:
            payloads = conn.decoder.feed(data)
        except FrameError as exc:
            return self._reject(conn, f"Error. Bad frame: {exc}.")
        effects: list[Effect] = []
        session = self.chat.sessions[conn.conn_id]
        for payload in payloads:
            try:
                request = requests.decode(payload)
            except SchemaError as exc:
                return effects + self._reject(conn, f"Error. Bad request: {exc}.")
            try:
                replies = self.chat.handle(conn.conn_id, request, now)
            except Exception:  # a bug must cost one connection, never the server
                traceback.print_exc()
                return effects + self._reject(conn, "Error. Internal server error.")
            effects += replies
            if any(isinstance(e, Close) for e in replies):
                return effects  # whatever else it sent comes after its own end
        if session.username is not None:
            conn.decoder.max_frame = self.limits.max_frame
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
        for effect in effects:
            if isinstance(effect, Append):
                self.logs.append(effect.log, effect.line)
        self.logs.flush()  # every message is in its log before its acknowledgement is queued
        for effect in effects:
            if isinstance(effect, Send):
                self._queue(effect.conns, effect.message)
            elif isinstance(effect, Announce):
                self._lines.append(effect.line)
            elif isinstance(effect, Close):
                closes.append(effect.conn)
        for conn_id in closes:
            conn = self.connections.get(conn_id)
            if conn is not None:
                conn.closing = True  # no more reading: its next bytes would come after its end
                self._mark(conn)
        self._flush_output(now)
        if self.chat.presence_version != self.userlog_version:
            self.userlog_version = self.chat.presence_version
            self.logs.write_userlog(self.chat.userlog())
        if self._lines and self.console is not None:
            self.console.write("\n".join(self._lines) + "\n")
            self.console.flush()
        self._lines.clear()

    def _queue(self, conn_ids: tuple[int, ...], message: Message) -> None:
        if not conn_ids:
            return
        data = frame(encode(message))  # encoded once, however many receive it
        for conn_id in conn_ids:
            conn = self.connections.get(conn_id)
            if conn is not None and not conn.closing:
                conn.out += data
                self._mark(conn)

    def _mark(self, conn: Connection) -> None:
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
                    self._say(f"connection {conn.conn_id} stopped reading; disconnecting it")
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
            self._mark(conn)  # finished: dropped by _flush_output
            return
        events = (0 if conn.closing else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.out else 0)
        if events != conn.events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _drop(self, conn: Connection, now: float) -> list[Effect]:
        """Forget a connection; a logged-in user is logged out."""
        if self.connections.pop(conn.conn_id, None) is None:
            return []
        self.selector.unregister(conn.sock)
        conn.sock.close()
        return self.chat.disconnect(conn.conn_id, now)

    def _say(self, line: str) -> None:
        self._lines.append(line)

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            conn.sock.close()
        self.connections.clear()
        self.listener.close()
        self.logs.flush()
        self.logs.write_userlog("")


# --- start-up ----------------------------------------------------------------------------

USAGE = "python3 server.py SERVER_PORT NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS [options]"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"Error: {message}. Usage: {USAGE}")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(2)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="server.py", description="TESSENGER chat server.")
    parser.add_argument("port", metavar="SERVER_PORT", help="TCP port to listen on (0: let the OS choose)")
    parser.add_argument("attempts", metavar="NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS",
                        help="failed logins in a row that block an account (1 to 5)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all interfaces)")
    parser.add_argument("--data-dir", default=".", help="where credentials.txt and the logs live (default: .)")
    parser.add_argument("--credentials", help="accounts file (default: DATA_DIR/credentials.txt)")
    parser.add_argument("--block-seconds", type=float, default=10.0, help="how long a blocked account stays blocked")
    parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME, help="largest frame accepted, bytes")
    parser.add_argument("--login-timeout", type=float, default=60.0, help="seconds a connection has to log in")
    parser.add_argument("--max-output", type=int, default=1024 * 1024,
                        help="unsent bytes after which a client that stopped reading is dropped")
    parser.add_argument("--max-connections", type=int, default=10_000, help="connections served at once")
    parser.add_argument("--fsync", action="store_true", help="fsync the logs every turn before acknowledging")
    parser.add_argument("--quiet", action="store_true", help="print nothing but start-up errors")
    args = parser.parse_args(argv)
    attempts = args.attempts
    if not (attempts.isdigit() and 1 <= int(attempts) <= 5):
        fail(f"Invalid number of allowed failed consecutive attempt: {attempts}. "
             "The valid value of argument number is an integer between 1 and 5")
    args.attempts = int(attempts)
    if not (args.port.isdigit() and int(args.port) <= 65535):
        fail(f"Invalid port: {args.port}. The port must be an integer between 0 and 65535")
    args.port = int(args.port)
    return args


def raise_file_limit(wanted: int) -> None:
    """Let the process hold as many sockets as the connection limit asks, as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + 64 if hard == resource.RLIM_INFINITY else min(hard, wanted + 64)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def listen(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        fail(f"Cannot listen on {host}:{port}: {exc.strerror}")
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def load_accounts(path: Path) -> dict[str, str]:
    try:
        return parse_credentials(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"Cannot read {path}: {exc.strerror}")
    except (UnicodeDecodeError, ValueError) as exc:
        fail(f"Cannot read {path}: {exc}")


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    data_dir = Path(args.data_dir)
    accounts = load_accounts(Path(args.credentials) if args.credentials else data_dir / "credentials.txt")
    logs = Logs(data_dir, args.fsync)
    try:
        history = logs.recover()
        logs.write_userlog("")
    except OSError as exc:
        fail(f"Cannot use the data directory {data_dir}: {exc.strerror}")
    limits = Limits(max(args.max_frame, 1024), min(4096, args.max_frame), args.login_timeout,
                    args.max_output, args.max_connections)
    raise_file_limit(limits.max_connections)
    listener = listen(args.host, args.port)
    chat = Chat(accounts, args.attempts, block_seconds=args.block_seconds, history=history)
    server = Server(listener, chat, logs, limits, None if args.quiet else sys.stdout)
    host, port = listener.getsockname()
    print(f"TESSENGER server listening on {host}:{port} ({len(accounts)} accounts, "
          f"{args.attempts} attempts before blocking)", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # same clean stop as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Server shutting down", flush=True)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
