"""Helpers for tests that run the real client.py: drive its stdin, wait for its lines.

``ClientProcess`` runs ``client.py`` with pipes (the non-terminal mode) in its own working
directory. ``FakeServer`` is a scripted server speaking the wire protocol, for what the real
server never does: delay a reply, send escape sequences, send garbage.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from core.commands import COMMAND_PROMPT
from core.framing import FrameDecoder, encode as frame
from core.messages import Message, encode, requests
from tests.harness import PASSWORDS, ROOT, TIMEOUT

TIMESTAMP = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d"
PROMPT = COMMAND_PROMPT  # as a line of its own when stdin is not a terminal
LOGIN_LINES = ["Please login", "Username:", "Password:", "Welcome to TESSENGER!"]


class Output:
    """A stream's lines, collected on a thread; a cursor marks what a test has looked at."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.closed = False
        self.cursor = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait(self, matches: Callable[[str], bool], what: str, timeout: float = TIMEOUT) -> int:
        """Index of the first line at or after the cursor that ``matches``."""
        deadline = time.monotonic() + timeout
        index = self.cursor
        with self._changed:
            while True:
                while index < len(self.lines):
                    if matches(self.lines[index]):
                        return index
                    index += 1
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    state = "output closed" if self.closed else "timed out"
                    raise AssertionError(f"{state} waiting for {what}; got {self.lines[self.cursor:]}")
                self._changed.wait(remaining)

    def until(self, line: str, timeout: float = TIMEOUT) -> list[str]:
        """The lines before the next ``line`` (consumed, with it)."""
        index = self.wait(lambda l: l == line, repr(line), timeout)
        taken = self.lines[self.cursor:index]
        self.cursor = index + 1
        return taken

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """Wait for a line fully matching the regex ``pattern``; consume up to it."""
        compiled = re.compile(pattern)
        index = self.wait(lambda l: compiled.fullmatch(l) is not None, repr(pattern), timeout)
        self.cursor = index + 1
        return self.lines[index]

    def rest(self, timeout: float = TIMEOUT) -> list[str]:
        """Every line up to the end of the stream."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"output still open; got {self.lines[self.cursor:]}")
                self._changed.wait(remaining)
        taken = self.lines[self.cursor:]
        self.cursor = len(self.lines)
        return taken


class ClientProcess:
    """``client.py 127.0.0.1 PORT 0`` in ``workdir``, stdin and stdout piped (stderr merged in,
    so that a traceback shows up among the lines a test compares)."""

    def __init__(self, port: int, workdir: Path, *flags: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "client.py"), "127.0.0.1", str(port), "0", *flags],
            cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output = Output(self.process.stdout)

    def type(self, *lines: str) -> None:
        self.process.stdin.write("".join(line + "\n" for line in lines))
        self.process.stdin.flush()

    def command(self, line: str) -> list[str]:
        """Type ``line``; the lines shown before the next command prompt."""
        self.type(line)
        return self.output.until(PROMPT)

    def login(self, username: str) -> "ClientProcess":
        """Log in, typing both answers at once (the client must queue the password).

        From the start, or after the "Username:" of a refused attempt has been consumed."""
        expected = LOGIN_LINES if self.output.cursor == 0 else LOGIN_LINES[2:]
        self.type(username, PASSWORDS[username])
        assert self.output.until(PROMPT) == expected
        return self

    def close_stdin(self) -> None:
        self.process.stdin.close()

    def exit_code(self, timeout: float = TIMEOUT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:  # stdin to a dead process
                pass


class FakeServer:
    """A one-connection server the test scripts message by message."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.pending: list[Message] = []

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()

    def send(self, *messages: Message) -> None:
        self.send_raw(b"".join(frame(encode(m)) for m in messages))

    def send_raw(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def recv(self, timeout: float = TIMEOUT) -> Message:
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while not self.pending:
            self.conn.settimeout(max(0.001, deadline - time.monotonic()))
            data = self.conn.recv(65536)
            if not data:
                raise AssertionError("the client closed the connection")
            self.pending += [requests.decode(p) for p in self.decoder.feed(data)]
        return self.pending.pop(0)

    def idle(self) -> bool:
        """True if no byte has arrived from the client. On loopback a sent frame is in the
        receiver's buffer once ``send`` returns, so after the client has shown a line, anything
        it sent before showing it is already here."""
        assert self.conn is not None
        if self.pending or self.decoder.buffered:
            return False
        self.conn.setblocking(False)
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return True
        if not data:
            raise AssertionError("the client closed the connection")
        self.pending += [requests.decode(p) for p in self.decoder.feed(data)]
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def spawn_on_pty(argv: list[str], workdir: Path, columns: int = 80, lines: int = 24) -> tuple[subprocess.Popen, int]:
    """``argv`` in ``workdir`` on a pseudo-terminal of its own; the process and the master fd."""
    import fcntl
    import pty
    import struct
    import termios

    workdir.mkdir(parents=True, exist_ok=True)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    process = subprocess.Popen(
        argv, cwd=workdir, stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, "TERM": "xterm", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
        # a session of its own with the pty as controlling terminal, so that Ctrl-C
        # typed on it raises SIGINT in the client as it would in a real terminal
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    return process, master


def stop_on_pty(process: subprocess.Popen, master: int) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    os.close(master)


class TerminalClient:
    """client.py on a pseudo-terminal of its own (80x24), as a user at a terminal runs it."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.process, self.master = spawn_on_pty(
            [sys.executable, str(ROOT / "client.py"), "127.0.0.1", str(port), "0"], workdir)
        self.screen = b""  # everything written to the terminal, escape sequences included
        self.cursor = 0

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait until ``text`` is written after the cursor; return what came before it."""
        import select

        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.screen[self.cursor:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; got {self.screen[self.cursor:]!r}")
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the client has exited and closed the terminal
                    raise AssertionError(f"terminal closed without {text!r}; got {self.screen[self.cursor:]!r}")
        index = self.screen.index(wanted, self.cursor)
        before = self.screen[self.cursor:index].decode(errors="replace")
        self.cursor = index + len(wanted)
        return before

    def stop(self) -> None:
        stop_on_pty(self.process, self.master)
