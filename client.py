"""TESSENGER client: one select loop over stdin, the server connection and a UDP socket.

    python3 client.py SERVER_IP SERVER_PORT CLIENT_UDP_PORT [--receive-dir DIR]

Every decision is made by ``core.client_session.ClientSession``; this file moves bytes and
lines. No threads, no sleeps, and only one blocking read: the password, typed while logging
in, when nothing else can happen yet. Timers are the select timeout (the nearest deadline).

On a terminal, input is edited with GNU readline's callback interface, so a line that
arrives while the user types clears the input line, prints, and redraws the prompt and the
half-typed text. Python's ``readline`` module does not expose that interface, so it is
reached through ``ctypes`` in the library the module has already loaded. Without it, or
when stdin is not a terminal, lines are read from the file descriptor and split here.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import getpass
import os
import selectors
import signal
import socket
import stat
import sys
import time
from collections import deque
from types import FrameType
from typing import NoReturn, Protocol, TextIO

from core.client_session import (
    Address, Ask, ClientSession, Datagram, Download, Effect, Exit, NoTransfers, Print, Prompt,
    Send, Transfers, Upload,
)
from core.framing import FrameDecoder, FrameError, encode as frame
from core.messages import Message, SchemaError, encode, replies
from core.render import printable

CONNECT_TIMEOUT = 10.0
READ_CHUNK = 64 * 1024
MAX_REPLY_FRAME = 16 * 1024 * 1024  # an /activeuser list of thousands of users is one frame
DATAGRAMS_PER_TURN = 256  # a datagram flood cannot starve the terminal or the server connection
MAX_DATAGRAM = 65535


# --- input and output --------------------------------------------------------------------

Line = str | None  # None: end of input


class Console(Protocol):
    """The user's side: lines typed in, lines shown, prompts."""

    hides_input: bool  # a password must be read with read_secret (a terminal)

    def fileno(self) -> int: ...

    def read(self) -> list[Line]:
        """The lines completed by what stdin holds now (it is readable)."""
        ...

    def read_secret(self, prompt: Prompt) -> list[Line]:
        """Block for one line without echo; [] when interrupted by Ctrl-C."""
        ...

    def show(self, lines: list[str]) -> None: ...

    def ask(self, prompt: Prompt) -> None: ...

    def close(self) -> None: ...


def read_password(prompt: Prompt) -> list[Line]:
    """``getpass`` on the terminal: the loop's one blocking read, made while logging in."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # so Ctrl-C ends the read
    interrupted = False
    try:
        return [getpass.getpass(prompt.value)]
    except EOFError:
        return [None]
    except KeyboardInterrupt:
        interrupted = True
        return []
    finally:
        signal.signal(signal.SIGINT, previous)
        if interrupted:
            print(flush=True)
            signal.raise_signal(signal.SIGINT)  # the loop's handler sees it like any other Ctrl-C


class LineConsole:
    """stdin as a byte stream split into lines: a pipe, a file, or a terminal without readline.

    Prompts are shown as lines of their own (without the trailing space), so that a
    transcript reads one event per line.
    """

    def __init__(self, out: TextIO, fd: int = 0) -> None:
        self.out = out
        self.fd = fd
        self.hides_input = os.isatty(fd)
        self._partial = b""

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[Line]:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except OSError:  # e.g. the terminal went away
            data = b""
        if not data:
            last, self._partial = self._partial, b""
            return [*([_decode(last)] if last else []), None]
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [_decode(line) for line in complete]

    def read_secret(self, prompt: Prompt) -> list[Line]:
        return read_password(prompt)

    def show(self, lines: list[str]) -> None:
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def ask(self, prompt: Prompt) -> None:
        if not (prompt is Prompt.PASSWORD and self.hides_input):  # getpass shows its own
            self.show([prompt.value.rstrip()])

    def close(self) -> None:
        pass


def _decode(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")


_LINE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class ReadlineConsole:
    """A terminal edited by GNU readline in callback mode (see the module's docstring)."""

    hides_input = True

    def __init__(self, out: TextIO) -> None:
        """Raises ImportError, OSError or AttributeError where readline cannot be used."""
        import readline

        self.out = out
        self._readline = readline
        rl = ctypes.CDLL(readline.__file__)
        self._libc = ctypes.CDLL(None)
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._install = rl.rl_callback_handler_install
        self._install.argtypes = [ctypes.c_char_p, _LINE_HANDLER]
        self._read_char = rl.rl_callback_read_char
        self._remove = rl.rl_callback_handler_remove
        self._set_prompt = rl.rl_set_prompt
        self._set_prompt.argtypes = [ctypes.c_char_p]
        self._clear_line = rl.rl_clear_visible_line
        self._redisplay = rl.rl_forced_update_display
        # Python, not readline, handles Ctrl-C (as a clean logout)
        ctypes.c_int.in_dll(rl, "rl_catch_signals").value = 0
        readline.parse_and_bind("set enable-bracketed-paste off")  # a pasted line break ends a line
        self._encoding = sys.stdin.encoding or "utf-8"
        self._handler = _LINE_HANDLER(self._on_line)  # kept referenced while readline holds it
        self._lines: list[Line] = []
        self._installed = False

    def fileno(self) -> int:
        return 0

    def _on_line(self, pointer: int | None) -> None:
        if pointer is None:
            self._lines.append(None)
            return
        try:
            text = ctypes.string_at(pointer).decode(self._encoding, "replace")
        finally:
            self._libc.free(pointer)  # readline hands over a malloc'd line
        if text.strip():
            self._readline.add_history(text)
        self._lines.append(text)
        # taken: until the session asks for the next line, type-ahead gets no prompt (set
        # here, before readline redraws the prompt for the next line)
        self._set_prompt(b"")

    def read(self) -> list[Line]:
        self._read_char()
        lines, self._lines = self._lines, []
        return lines

    def read_secret(self, prompt: Prompt) -> list[Line]:
        lines = read_password(prompt)
        self._prompt("")
        return lines

    def show(self, lines: list[str]) -> None:
        if self._installed:
            self._clear_line()
            self._libc.fflush(None)  # readline writes through C stdio, this file through Python's
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()
        if self._installed:
            self._redisplay()

    def ask(self, prompt: Prompt) -> None:
        if prompt is Prompt.PASSWORD:
            self._uninstall()  # read_secret reads it; readline would echo it
        else:
            self._prompt(prompt.value)

    def _prompt(self, text: str) -> None:
        encoded = text.encode(self._encoding, "replace")
        if self._installed:
            self._set_prompt(encoded)
            self._redisplay()
        else:
            self._install(encoded, self._handler)
            self._installed = True

    def _uninstall(self) -> None:
        if self._installed:
            self._clear_line()
            self._libc.fflush(None)
            self._remove()  # also gives the terminal its settings back
            self._installed = False

    def close(self) -> None:
        self._uninstall()


def open_console(out: TextIO) -> Console:
    if os.isatty(0) and out.isatty():
        try:
            return ReadlineConsole(out)
        except (ImportError, OSError, AttributeError):
            pass  # no GNU readline here: plain line reads still work
    return LineConsole(out)


# --- the loop ----------------------------------------------------------------------------

class Client:
    def __init__(
        self,
        console: Console,
        server: socket.socket,
        udp: socket.socket,
        session: ClientSession,
        transfers: Transfers,
    ) -> None:
        self.console = console
        self.server = server
        self.udp = udp
        self.session = session
        self.transfers = transfers
        self.decoder = FrameDecoder(MAX_REPLY_FRAME)
        self.out = bytearray()  # frames the server has not taken yet
        self.datagrams: deque[tuple[bytes, Address]] = deque()  # datagrams the socket refused
        self.exit_code: int | None = None
        self.interrupted = False
        self._lines: list[str] = []  # lines to show, gathered so the prompt is redrawn once
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
        self._apply(self.session.start(), time.monotonic())
        while self.exit_code is None:
            if self.interrupted:
                self.interrupted = False
                self._apply(self.session.interrupt(time.monotonic()), time.monotonic())
            elif self.session.waiting_for is Prompt.PASSWORD and self.console.hides_input:
                self._feed(self.console.read_secret(Prompt.PASSWORD))
            if self.exit_code is not None:
                break
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
                self.selector.unregister(self.console.fileno())  # it would stay readable forever
                self._apply(self.session.end_of_input(now), now)
            else:
                self._apply(self.session.line(line, now), now)
            if self.exit_code is not None:
                return

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
            self._apply(self.session.connection_lost(now), now)
            return
        try:
            payloads = self.decoder.feed(data)
        except FrameError as exc:
            self._apply(self.session.bad_message(str(exc)), now)
            return
        for payload in payloads:
            try:
                message = replies.decode(payload)
            except SchemaError as exc:
                self._apply(self.session.bad_message(str(exc)), now)
                return
            self._apply(self.session.received(message, now), now)
            if self.exit_code is not None:
                return

    def _send(self, message: Message) -> None:
        self.out += frame(encode(message))
        self._write_server()

    def _write_server(self) -> None:
        try:
            sent = self.server.send(self.out) if self.out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.out.clear()
            now = time.monotonic()
            self._apply(self.session.connection_lost(now), now)
            return
        del self.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.selector.get_key(self.server).events != events:
            self.selector.modify(self.server, events, self._on_server)

    # --- UDP -----------------------------------------------------------------------------

    def _on_udp(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_datagrams()
        if not mask & selectors.EVENT_READ:
            return
        for _ in range(DATAGRAMS_PER_TURN):
            try:
                data, address = self.udp.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # e.g. an ICMP "port unreachable" for something sent earlier
                continue
            now = time.monotonic()
            self._apply(self.transfers.datagram(data, address[:2], now), now)
            if self.exit_code is not None:
                return

    def _send_datagram(self, data: bytes, address: Address) -> None:
        self.datagrams.append((data, address))
        self._flush_datagrams()

    def _flush_datagrams(self) -> None:
        while self.datagrams:
            data, address = self.datagrams[0]
            try:
                self.udp.sendto(data, address)
            except BlockingIOError:
                break
            except OSError:
                pass  # a datagram that cannot go is a lost datagram: the engine retransmits
            self.datagrams.popleft()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.datagrams else 0)
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
                case Upload(path, ready):
                    self._apply(self.transfers.upload(path, ready, now), now)
                case Download(offer):
                    self._apply(self.transfers.download(offer, now), now)
                case Datagram(data, address):
                    self._send_datagram(data, address)
                case Exit(code):
                    self.console.close()  # the last lines go below the input line, not into it
                    self._apply(self.transfers.close(now), now)
                    self.exit_code = code
        self._show()

    def _show(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.console.show(lines)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for sock in (self._wakeup, self._wakeup_write, self.server, self.udp):
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
                        help="where received files are saved (default: the working directory)")
    args = parser.parse_args(argv)
    args.server_port = _port(args.server_port, "server port", 1)
    args.udp_port = _port(args.udp_port, "UDP port", 0)
    if not os.path.isdir(args.receive_dir):
        fail(f"Cannot use {args.receive_dir} to receive files: it is not a directory", 2)
    return args


def regular_file_size(path: str) -> int:
    """The size of the readable regular file at ``path`` (a FIFO would block the reader)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    if not os.access(path, os.R_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return status.st_size


def bind_udp(port: int) -> socket.socket:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("0.0.0.0", port))
    except OSError as exc:
        fail(f"Cannot use UDP port {port}: {exc.strerror}")
    return udp


def connect(host: str, port: int) -> socket.socket:
    try:
        server = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as exc:
        fail(f"Cannot find the server {host}: {exc.strerror}")
    except OSError as exc:
        fail(f"Cannot connect to the server at {host}:{port}: {exc.strerror or exc}")
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    udp = bind_udp(args.udp_port)
    server = connect(args.server_ip, args.server_port)
    session = ClientSession(udp.getsockname()[1], file_size=regular_file_size)
    client = Client(open_console(sys.stdout), server, udp, session, NoTransfers())
    try:
        return client.run()
    except BrokenPipeError:  # whoever read our output has gone; the server logs us out
        sys.stdout = open(os.devnull, "w")
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
