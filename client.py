"""TESSENGER client: one select loop over stdin, the server connection and a UDP socket.

    python3 client.py SERVER_IP SERVER_PORT CLIENT_UDP_PORT [--receive-dir DIR]
        [--datagram-size BYTES] [--max-receive-size SIZE] [--max-incoming N] [--keep-partial HOURS]
        [--simulate-loss FRACTION] [--tls] [--tls-ca FILE] [--known-servers FILE]

Every decision is made by ``core.client_session.ClientSession`` (the chat) and
``core.transfers.TransferEngine`` (files peer to peer over UDP); this file moves bytes,
lines and file contents (``shell.storage.DiskStorage``). No threads, no sleeps, and only one blocking
read: the password, typed while logging in, when nothing else can happen yet. Timers are
the select timeout (the nearest deadline). Before the loop starts, connecting and (with
``--tls``) the TLS handshake block, each within CONNECT_TIMEOUT.

The terminal side (line editing, prompts, the progress line) is ``shell.console``; the UDP
socket (``DatagramPort``, batched by the kernel) is ``shell.datagrams``.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import selectors
import signal
import socket
import stat
import sys
import time
from types import FrameType
from typing import Callable, NoReturn, Sequence

from core.client_session import (
    Address, Ask, ClientSession, Connect, Datagrams, Download, Effect, Ended, Exit, Print, Prompt, Send,
    Status, Transfers, Upload,
)
from core.completion import Names, candidates
from core.framing import FrameDecoder, FrameError, encode as frame
from core.messages import Message, SchemaError, encode, replies
from core.render import printable
from core.transfer import MIN_DATAGRAM_SIZE
from core.transfer_wire import MAX_DATAGRAM as MAX_UDP_PAYLOAD
from core.transfers import DEFAULT_MAX_INCOMING, DEFAULT_MAX_RECEIVE_SIZE, TransferEngine
from shell import tls
from shell.console import Console, Line, ReadlineConsole, open_console, take_terminal
from shell.datagrams import DatagramPort, bind_udp, keep_freed_memory
from shell.receive_dir import USERNAME, ReceiveDirectory
from shell.storage import DiskStorage
from shell.tls import TLSTransport

CONNECT_TIMEOUT = 10.0
READ_CHUNK = 64 * 1024
MAX_REPLY_FRAME = 16 * 1024 * 1024  # an /activeuser list of thousands of users is one frame
DATAGRAMS_PER_TURN = 512  # a datagram flood cannot starve the terminal or the server connection
BYTES_PER_TURN = 4 * 1024 * 1024  # nor hold more than this in memory before it is written


# --- the loop ----------------------------------------------------------------------------

class Client:
    def __init__(
        self,
        console: Console,
        server: socket.socket | TLSTransport,
        udp: socket.socket,
        session: ClientSession,
        transfers: Transfers,
        *,
        names: Names | None = None,
        simulate_loss: float = 0.0,
        secure: Callable[[socket.socket], TLSTransport] | None = None,
    ) -> None:
        self.console = console
        self.names = names or Names()  # heard from the server, for Tab completion
        self.server: socket.socket | None = server  # None while reconnecting
        self._server_address = server.getpeername()  # where to reconnect, resolved once
        self._server_family = server.family
        self._secure = secure  # TLS: how a reconnection is secured before logging in again
        self.udp = udp
        self.session = session
        self.transfers = transfers
        self.decoder = FrameDecoder(MAX_REPLY_FRAME)
        self.out = bytearray()  # frames the server has not taken yet
        self.port = DatagramPort(udp)  # the transfers' datagrams, both ways
        self._loss = simulate_loss
        self._lose = random.Random().random
        self.exit_code: int | None = None
        self.interrupted = False
        self.resized = False
        self._stdin_open = True  # until end of input
        self._stdin_watched = True
        self._lines: list[str] = []  # lines to show, gathered so the prompt is redrawn once
        self._status: str | None = None  # the transfers' progress line (terminals only)
        self._status_changed = False
        self._wakeup, wakeup_write = socket.socketpair()
        self._wakeup_write = wakeup_write  # kept open: signals write to it
        for sock in (self._wakeup, wakeup_write, server, udp):
            sock.setblocking(False)
        self.selector = selectors.SelectSelector()  # works for pipes, files and terminals alike
        self.selector.register(console.fileno(), selectors.EVENT_READ, self._on_stdin)
        self.selector.register(server, selectors.EVENT_READ, self._on_server)
        self.selector.register(udp, selectors.EVENT_READ, self._on_udp)
        self.selector.register(self._wakeup, selectors.EVENT_READ, self._on_wakeup)

    def run(self) -> int:
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        if hasattr(signal, "SIGWINCH"):
            signal.signal(signal.SIGWINCH, self._on_resize)
        self._apply(self.session.start(), time.monotonic())
        while self.exit_code is None:
            if self.resized:
                self.resized = False
                self.console.resize()
            if self.interrupted:
                self.interrupted = False
                self._apply(self.session.interrupt(time.monotonic()), time.monotonic())
            elif self.session.waiting_for is Prompt.PASSWORD and self.console.hides_input:
                self._feed(self.console.read_secret(Prompt.PASSWORD))
            if self.exit_code is not None:
                break
            self._watch_stdin()
            for key, mask in self.selector.select(self._timeout()):
                key.data(mask)
                if self.exit_code is not None:
                    break
            else:
                now = time.monotonic()
                self._apply(self.session.tick(now) + self.transfers.tick(now), now)
        return self.exit_code

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self.session.deadline(), self.transfers.deadline()) if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True  # acted on by the loop; the wakeup fd ends its select

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        self.resized = True  # as for _on_signal

    def _on_wakeup(self, mask: int) -> None:
        try:
            while self._wakeup.recv(4096):
                pass
        except BlockingIOError:
            pass

    # --- stdin ---------------------------------------------------------------------------

    def _on_stdin(self, mask: int) -> None:
        self._feed(self.console.read())

    def _feed(self, lines: list[Line]) -> None:
        for line in lines:
            now = time.monotonic()
            if line is None:
                self._stdin_open = False  # it would stay readable forever
                self._watch_stdin()
                self._apply(self.session.end_of_input(now), now)
            else:
                self._apply(self.session.line(line, now), now)
            if self.exit_code is not None:
                return

    def _watch_stdin(self) -> None:
        """Read stdin only while the console wants a line: keys typed meanwhile wait in the
        terminal for the next prompt."""
        wanted = self._stdin_open and self.console.wants_input
        if wanted != self._stdin_watched:
            self._stdin_watched = wanted
            if wanted:
                self.selector.register(self.console.fileno(), selectors.EVENT_READ, self._on_stdin)
            else:
                self.selector.unregister(self.console.fileno())

    # --- the server ----------------------------------------------------------------------

    def _on_server(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write_server()
        if not mask & selectors.EVENT_READ or self.exit_code is not None:
            return
        now = time.monotonic()
        try:
            data = self.server.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_server()
            self._apply(self.session.connection_lost(now), now)
            return
        try:
            payloads, broken = self.decoder.feed(data), None
        except FrameError as exc:  # what the server sent before the stream broke still counts
            payloads, broken = exc.frames, exc
        for payload in payloads:
            try:
                message = replies.decode(payload)
            except SchemaError as exc:
                self._apply(self.session.bad_message(str(exc)), now)
                return
            self.names.observe(message)
            self._apply(self.session.received(message, now), now)
            if self.exit_code is not None:
                return
        if broken is not None:
            self._apply(self.session.bad_message(str(broken)), now)

    def _send(self, message: Message) -> None:
        if self.server is None:
            return  # lost: the session knows, and sends nothing until it has logged in again
        self.out += frame(encode(message))
        self._write_server()

    def _write_server(self) -> None:
        try:
            sent = self.server.send(self.out) if self.out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop_server()
            now = time.monotonic()
            self._apply(self.session.connection_lost(now), now)
            return
        del self.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.selector.get_key(self.server).events != events:
            self.selector.modify(self.server, events, self._on_server)

    def _drop_server(self) -> None:
        """Forget the connection to the server (lost, or an attempt to reconnect failed)."""
        if self.server is not None:
            self.selector.unregister(self.server)
            self.server.close()
            self.server = None
        self.out.clear()
        self.decoder = FrameDecoder(MAX_REPLY_FRAME)

    def _connect(self, now: float) -> None:
        """Start connecting to the server again without blocking: done when writable."""
        sock = socket.socket(self._server_family, socket.SOCK_STREAM)
        sock.setblocking(False)
        error = sock.connect_ex(self._server_address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self._apply(self.session.connect_failed(now), now)
            return
        self.server = sock
        self.selector.register(sock, selectors.EVENT_WRITE, self._on_connected)

    def _on_connected(self, mask: int) -> None:
        now = time.monotonic()
        assert self.server is not None
        if self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._drop_server()
            self._apply(self.session.connect_failed(now), now)
            return
        self.server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._secure is not None:
            self.server = self._secure(self.server)
            self._on_handshake(0)
            return
        self.selector.modify(self.server, selectors.EVENT_READ, self._on_server)
        self._apply(self.session.connected(now), now)

    def _on_handshake(self, mask: int) -> None:
        """A reconnection's TLS handshake, a step per readiness; the login waits for its end."""
        now = time.monotonic()
        try:
            events = self.server.handshake()
        except tls.TLSSetupError as exc:  # not the server trusted before: stop, as SSH does
            self._drop_server()
            self._apply([Print(str(exc)), Exit(1)], now)
            return
        except OSError:
            self._drop_server()
            self._apply(self.session.connect_failed(now), now)
            return
        if events:
            self.selector.modify(self.server, events, self._on_handshake)
            return
        self.selector.modify(self.server, selectors.EVENT_READ, self._on_server)
        self._apply(self.session.connected(now), now)

    # --- UDP -----------------------------------------------------------------------------

    def _on_udp(self, mask: int) -> None:
        """Drain the socket (a bounded number of datagrams and bytes per turn), each datagram
        to the engine at once so that its answer (an ACK) leaves at once; file writes wait
        for the tick, which comes before the next read.

        The port hands over each datagram as an object of its own (``recvfrom``, or a slice
        of a coalesced read), not a view of a reused buffer: the engine keeps views into
        each datagram until its bytes are written."""
        if mask & selectors.EVENT_WRITE:
            self._flush_datagrams()
        if not mask & selectors.EVENT_READ:
            return
        receive = self.port.receive
        datagram = self.transfers.datagram
        monotonic = time.monotonic
        left = DATAGRAMS_PER_TURN
        budget = BYTES_PER_TURN
        while left > 0 and budget > 0:
            try:
                batch, address = receive()
            except BlockingIOError:
                return
            except OSError:  # e.g. an ICMP "port unreachable" for something sent earlier
                left -= 1
                continue
            now = monotonic()  # one read: the datagrams arrived together
            for data in batch:
                effects = datagram(data, address, now)
                if effects:
                    self._apply(effects, now)
                    if self.exit_code is not None:
                        return
                budget -= len(data)
            left -= len(batch)

    def _send_datagrams(self, datagrams: Sequence[bytes], address: Address) -> None:
        """Send in order; what the socket refuses waits for writability."""
        if self._loss:  # --simulate-loss: a lossy network, for tests and benchmarks
            datagrams = [data for data in datagrams if self._lose() >= self._loss]
        self.port.send(datagrams, address)
        self._watch_writable()

    def _flush_datagrams(self) -> None:
        self.port.flush()
        self._watch_writable()

    def _watch_writable(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.port.waiting else 0)
        if self.selector.get_key(self.udp).events != events:
            self.selector.modify(self.udp, events, self._on_udp)

    # --- effects -------------------------------------------------------------------------

    def _apply(self, effects: list[Effect], now: float) -> None:
        for effect in effects:
            match effect:
                case Print(line):
                    self._lines.append(printable(line))
                case Ask(prompt):
                    self._show()
                    self.console.ask(prompt)
                case Send(message):
                    self._send(message)
                case Datagrams(datagrams, address):
                    self._send_datagrams(datagrams, address)
                case Upload():
                    self._apply(self.transfers.upload(effect, now), now)
                case Download(offer):
                    self._apply(self.transfers.download(offer, now), now)
                case Ended(message):
                    self._apply(self.transfers.ended(message, now), now)
                case Connect():
                    self._connect(now)
                case Status(text):
                    self._status = text  # drawn once, below the lines shown with it
                    self._status_changed = True
                case Exit(code):
                    self.console.close()  # the last lines go below the input line, not into it
                    self._apply(self.transfers.close(now, self._leaving_reason()), now)
                    self.exit_code = code
        self._show()

    def _leaving_reason(self) -> str:
        return f"{self.session.username} logged out" if self.session.username else "the client closed"

    def _show(self) -> None:
        if self._status_changed:
            self._status_changed = False
            self.console.status(self._status, redraw=not self._lines)
        if self._lines:
            lines, self._lines = self._lines, []
            self.console.show(lines)

    def close(self) -> None:
        # after an Exit this finds nothing left; after a crash it still tells the peers and
        # deletes the temporary files
        try:
            for effect in self.transfers.close(time.monotonic(), self._leaving_reason()):
                if isinstance(effect, Datagrams):
                    self._send_datagrams(effect.datagrams, effect.address)
        except Exception:
            pass
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for sock in (self._wakeup, self._wakeup_write, self.server, self.udp):
            if sock is not None:
                sock.close()
        self.console.close()


# --- start-up ----------------------------------------------------------------------------

USAGE = "python3 client.py SERVER_IP SERVER_PORT CLIENT_UDP_PORT [options]"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"Error: {message}. Usage: {USAGE}", 2)


def fail(line: str, code: int = 1) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(code)


def _port(text: str, what: str, lowest: int) -> int:
    if not (text.isascii() and text.isdigit() and lowest <= int(text) <= 65535):
        fail(f"Invalid {what}: {text}. The port must be an integer between {lowest} and 65535", 2)
    return int(text)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="client.py", description="TESSENGER chat client.")
    parser.add_argument("server_ip", metavar="SERVER_IP", help="the server's address (IP or host name)")
    parser.add_argument("server_port", metavar="SERVER_PORT", help="the server's TCP port")
    parser.add_argument("udp_port", metavar="CLIENT_UDP_PORT",
                        help="UDP port for files from other clients (0: let the OS choose)")
    parser.add_argument("--receive-dir", default=".",
                        help="where received files are saved (default: the working directory); "
                             f"{USERNAME} in it stands for the user, and the directory is made")
    parser.add_argument("--datagram-size", metavar="BYTES",
                        help=f"size of the UDP datagrams a file is sent in, and the largest accepted "
                             f"({MIN_DATAGRAM_SIZE}-{MAX_UDP_PAYLOAD}; default: {MAX_UDP_PAYLOAD} to a "
                             "loopback address, 1472 otherwise, to fit an Ethernet frame)")
    parser.add_argument("--max-receive-size", metavar="SIZE", default=str(DEFAULT_MAX_RECEIVE_SIZE),
                        help="refuse files larger than this; bytes, or with a K, M, G or T suffix "
                             "(powers of 1024; default: 4G)")
    parser.add_argument("--max-incoming", metavar="N", type=int, default=DEFAULT_MAX_INCOMING,
                        help=f"files received at once; further offers are declined (default {DEFAULT_MAX_INCOMING})")
    parser.add_argument("--keep-partial", metavar="HOURS", type=float, default=24.0,
                        help="partial files of interrupted transfers older than this are deleted when "
                             "the client starts (default 24)")
    parser.add_argument("--no-transfer-mac", dest="transfer_mac", action="store_false",
                        help="benchmarks only: transfer datagrams without MACs (unauthenticated; the peer "
                             "must use this flag too, or nothing gets through)")
    parser.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=None,
                        help="when the connection to the server is lost, try again (1, 2, 4 ... 30 s "
                             "apart) and log in again (default: on a terminal only; otherwise the "
                             "client exits, as scripts expect)")
    parser.add_argument("--simulate-loss", metavar="FRACTION", type=float, default=0.0,
                        help="testing: drop this fraction (0-1) of the UDP datagrams this client sends")
    tls.add_client_arguments(parser)
    args = parser.parse_args(argv)
    args.server_port = _port(args.server_port, "server port", 1)
    args.udp_port = _port(args.udp_port, "UDP port", 0)
    if USERNAME not in args.receive_dir and not os.path.isdir(args.receive_dir):
        fail(f"Cannot use {args.receive_dir} to receive files: it is not a directory", 2)
    if args.datagram_size is not None:
        text = args.datagram_size
        if not (text.isascii() and text.isdigit() and MIN_DATAGRAM_SIZE <= int(text) <= MAX_UDP_PAYLOAD):
            fail(f"Invalid datagram size: {text}. It must be an integer between {MIN_DATAGRAM_SIZE} "
                 f"and {MAX_UDP_PAYLOAD}", 2)
        args.datagram_size = int(text)
    size = parse_size(args.max_receive_size)
    if size is None:
        fail(f"Invalid maximum receive size: {args.max_receive_size}. Give bytes, or a number with "
             "a K, M, G or T suffix", 2)
    args.max_receive_size = size
    if args.max_incoming < 1:
        fail(f"Invalid --max-incoming: {args.max_incoming}. It must be at least 1", 2)
    if not args.keep_partial >= 0:
        fail(f"Invalid --keep-partial: {args.keep_partial}. It must be a number of hours, 0 or more", 2)
    if not 0.0 <= args.simulate_loss < 1.0:
        fail(f"Invalid loss: {args.simulate_loss}. It must be at least 0 and less than 1", 2)
    return args


def parse_size(text: str) -> int | None:
    """``1048576``, ``512K``, ``100M``, ``4G``, ``1T`` (powers of 1024) as bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) * scale


def regular_file_size(path: str) -> int:
    """The size of the readable regular file at ``path`` (a FIFO would block the reader)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    if not os.access(path, os.R_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return status.st_size


def connect(host: str, port: int) -> socket.socket:
    try:
        server = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as exc:
        fail(f"Cannot find the server {host}: {exc.strerror}")
    except OSError as exc:
        fail(f"Cannot connect to the server at {host}:{port}: {exc.strerror or exc}")
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def secure(server: socket.socket, args: argparse.Namespace) -> tuple[TLSTransport, Callable[[socket.socket], TLSTransport]]:
    """The TLS handshake and the trust check, blocking (within CONNECT_TIMEOUT) before the
    loop starts: nothing else can happen yet, and no byte of the chat may leave before it.
    Also how the loop secures a reconnection, without blocking, to the same certificate."""
    known_servers = args.known_servers or tls.default_known_servers()
    try:
        transport, notice = tls.connect(server, args.server_ip, args.server_port, args.tls_ca, known_servers)
    except tls.TLSSetupError as exc:
        fail(str(exc))
    if notice:
        print(notice, flush=True)
    again = tls.reconnector(args.server_ip, args.server_port, args.tls_ca, known_servers, transport.peer_fingerprint())
    return transport, again


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    keep_freed_memory()
    sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    try:
        udp = bind_udp(args.udp_port)
    except OSError as exc:
        fail(f"Cannot use UDP port {args.udp_port}: {exc.strerror}")
    server = connect(args.server_ip, args.server_port)
    again = None
    if args.tls or args.tls_ca:
        server, again = secure(server, args)
    reconnect = sys.stdin.isatty() if args.reconnect is None else args.reconnect
    session = ClientSession(udp.getsockname()[1], file_size=regular_file_size, reconnect=reconnect)
    names = Names()
    console = open_console(sys.stdout, lambda before, word: candidates(before, word, names, session.username))
    # Incoming transfers may fill 3/4 of the receive buffer the kernel really granted (the
    # rest is room for the ACKs of our own uploads); the engine shares it among them.
    granted = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    transfers = TransferEngine(
        # partial files no transfer came back for are swept once the directory is known
        DiskStorage(ReceiveDirectory(args.receive_dir, lambda: session.username),
                    keep_partial=args.keep_partial * 3600),
        receive_window=granted * 3 // 4, datagram_size=args.datagram_size,
        max_receive_size=args.max_receive_size, show_progress=isinstance(console, ReadlineConsole),
        max_incoming=args.max_incoming, authenticate=args.transfer_mac,
    )
    client = Client(console, server, udp, session, transfers, names=names, simulate_loss=args.simulate_loss,
                    secure=again)
    give_back_terminal = take_terminal()
    try:
        return client.run()
    except BrokenPipeError:  # whoever read our output has gone; the server logs us out
        sys.stdout = open(os.devnull, "w")
        return 1
    finally:
        client.close()
        give_back_terminal()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
