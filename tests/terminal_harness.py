"""The real client.py on a pseudo-terminal of a fixed size, and what a person would see on it.

``PyteTerminal`` feeds everything the client writes to ``pyte``, a terminal emulator, and
reads its screen. ``TmuxTerminal`` runs the client in a real terminal multiplexer (tmux,
which rewraps lines when a window is resized, as most terminals do) for the resize tests.
Both wait on what the screen shows, never for a fixed time.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyte

from core.commands import COMMAND_PROMPT
from core.screen import wrap
from tests.client_harness import spawn_on_pty, stop_on_pty
from tests.harness import PASSWORDS, ROOT, TIMEOUT

TIMESTAMP = re.compile(r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d")
PROMPT = COMMAND_PROMPT + " "


def client_argv(port: int, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "client.py"), "127.0.0.1", str(port), "0", *flags]


def rows_of(lines: list[str], columns: int) -> list[str]:
    """The rows ``lines`` take on a terminal ``columns`` wide, as the client wraps them (write
    timestamps in full: they are replaced by "T" after wrapping, as on the screen)."""
    return [_normal(row) for line in lines for row in wrap(line, columns)]


def prompt_rows(typed: str, columns: int) -> list[str]:
    """The rows of the input line: the prompt and ``typed``, wrapped by the terminal."""
    line = PROMPT + typed
    return [line[i:i + columns].rstrip() for i in range(0, len(line), columns)]


class Terminal:
    columns: int

    def rows(self) -> list[str]:
        """The screen's rows, trailing spaces removed, timestamps replaced by "T"."""
        raise NotImplementedError

    def type(self, keys: str) -> None:
        raise NotImplementedError

    def wait(self, condition: Callable[[list[str]], object], what: str, timeout: float = TIMEOUT) -> list[str]:
        raise NotImplementedError

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> list[str]:
        return self.wait(lambda rows: any(text in row for row in rows), repr(text), timeout)

    def wait_bottom(self, bottom: list[str], timeout: float = TIMEOUT) -> list[str]:
        """Wait until the screen's last non-empty rows are ``bottom``."""
        return self.wait(lambda rows: _content(rows)[-len(bottom):] == bottom, f"bottom rows {bottom}", timeout)

    def content(self) -> list[str]:
        return _content(self.rows())

    def login(self, username: str) -> None:
        self.wait_for("Username:")
        self.type(username + "\r")
        self.wait_for("Password:")
        self.type(PASSWORDS[username] + "\r")
        self.wait_bottom(prompt_rows("", self.columns))


def _content(rows: list[str]) -> list[str]:
    """The rows up to the last non-empty one."""
    end = len(rows)
    while end and not rows[end - 1]:
        end -= 1
    return rows[:end]


def _normal(row: str) -> str:
    return TIMESTAMP.sub("T", row.rstrip())


class PyteTerminal(Terminal):
    """client.py on a pty of its own, ``columns`` x ``lines``, its output read by pyte."""

    def __init__(self, argv: list[str], workdir: Path, columns: int = 80, lines: int = 24) -> None:
        self.columns = columns
        self.process, self.master = spawn_on_pty(argv, workdir, columns, lines)
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""  # everything written to the terminal
        self.closed = False

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def rows(self) -> list[str]:
        return [_normal(row) for row in self.screen.display]

    def _pump(self, timeout: float) -> None:
        if self.closed or not select.select([self.master], [], [], timeout)[0]:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the client has exited and closed the terminal
            data = b""
        if not data:
            self.closed = True
            return
        self.raw += data
        self.stream.feed(data)

    def wait(self, condition: Callable[[list[str]], object], what: str, timeout: float = TIMEOUT) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            while select.select([self.master], [], [], 0)[0] and not self.closed:
                self._pump(0)  # everything written so far, before judging the screen
            rows = self.rows()
            if condition(rows):
                return rows
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                state = "terminal closed" if self.closed else "timed out"
                raise AssertionError(f"{state} waiting for {what}; screen:\n" + "\n".join(_content(rows)))
            self._pump(remaining)

    def exit_code(self, timeout: float = TIMEOUT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_on_pty(self.process, self.master)


class TmuxTerminal(Terminal):
    """client.py in a tmux window ``columns`` x ``lines``, on a tmux server of its own."""

    def __init__(self, argv: list[str], workdir: Path, columns: int = 80, lines: int = 24) -> None:
        if shutil.which("tmux") is None:
            import pytest

            pytest.skip("tmux is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.socket = f"tessenger-test-{os.getpid()}-{id(self)}"
        command = " ".join(_quote(arg) for arg in argv)
        self._tmux("-f", "/dev/null", "new-session", "-d", "-x", str(columns), "-y", str(lines),
                   "-c", str(workdir), "-e", "PYTHONUNBUFFERED=1", "-e", "LANG=C.UTF-8", f"exec {command}")
        self._tmux("set-option", "-g", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=TIMEOUT)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def type(self, keys: str) -> None:
        self._tmux("send-keys", "-l", keys)

    def rows(self) -> list[str]:
        # with the rows tmux moved into its history when a resize rewrapped the window
        return [_normal(row) for row in self._tmux("capture-pane", "-p", "-S", "-").split("\n")[:-1]]

    def resize(self, columns: int) -> None:
        self.columns = columns
        self._tmux("resize-window", "-x", str(columns))

    def wait(self, condition: Callable[[list[str]], object], what: str, timeout: float = TIMEOUT) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if condition(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n" + "\n".join(_content(rows)))
            time.sleep(0.02)  # polling the screen: tmux has no way to wait for a change

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=TIMEOUT)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"
