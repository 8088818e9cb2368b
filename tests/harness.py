"""Helpers for tests that run the real server: start it, and speak its wire protocol."""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from core.framing import FrameDecoder, encode as frame
from core.messages import Message, encode, replies

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = ROOT / "credentials.txt"
TIMEOUT = 10.0  # how long any expected event may take before a test fails

PASSWORDS = dict(line.split(" ") for line in CREDENTIALS.read_text().split("\n") if line)


def wait_for(condition: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition") -> object:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class LineReader:
    """Collects a process's output lines on a thread, so tests can wait for a line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()
        self.closed = False

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _drain(self, timeout: float) -> bool:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if item is None:
            self.closed = True
        else:
            self.lines.append(item)
        return True

    def settle(self, timeout: float = 0.2) -> list[str]:
        """Collect whatever has arrived, waiting at most ``timeout`` for more after each line."""
        while self._drain(timeout):
            pass
        return self.lines

    def expect(self, pattern: str | re.Pattern[str], start: int = 0, timeout: float = TIMEOUT) -> str:
        """Wait for a line matching ``pattern`` (a regex, or an exact line) at index >= start."""
        matcher = re.compile(pattern) if isinstance(pattern, re.Pattern) else None
        index = start
        deadline = time.monotonic() + timeout
        while True:
            while index < len(self.lines):
                line = self.lines[index]
                index += 1
                if (matcher.fullmatch(line) if matcher else line == pattern):
                    return line
            if self.closed:
                raise AssertionError(f"stream closed without {pattern!r}; got {self.lines[start:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._drain(remaining):
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}; got {self.lines[start:]}")


class ServerProcess:
    """The real server.py, on a port the OS picks, in its own data directory."""

    def __init__(self, data_dir: Path, attempts: int = 3, *flags: str, port: int = 0) -> None:
        self.data_dir = data_dir
        if not (data_dir / "credentials.txt").exists():
            shutil.copy(CREDENTIALS, data_dir / "credentials.txt")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), str(port), str(attempts), "--host", "127.0.0.1",
             "--data-dir", str(data_dir), *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output = LineReader(self.process.stdout)
        first = self.output.expect(re.compile(r"TESSENGER server listening on .*"))
        self.port = int(re.search(r":(\d+) ", first).group(1))

    def connect(self) -> "WireClient":
        return WireClient(("127.0.0.1", self.port))

    def log(self, name: str) -> str:
        path = self.data_dir / name
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class WireClient:
    """A blocking test client that speaks frames of JSON messages."""

    def __init__(self, address: tuple[str, int], source: str | None = None) -> None:
        """``source``: the local address to connect from (another loopback address acts as another host)."""
        self.sock = socket.create_connection(address, timeout=TIMEOUT,
                                             source_address=None if source is None else (source, 0))
        self.decoder = FrameDecoder(1 << 24)
        self.pending: list[Message] = []

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(frame(encode(m)) for m in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = TIMEOUT) -> Message:
        """The next message; AssertionError when none comes in time or the server closed."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("no message from the server in time") from None
            if not data:
                raise AssertionError("the server closed the connection")
            self.pending += [replies.decode(p) for p in self.decoder.feed(data)]
        return self.pending.pop(0)

    def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server has closed the connection (pending messages are discarded)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
