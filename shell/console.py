"""The user's terminal side of the client: lines typed in, lines shown, prompts, and the
progress line (the ``Console`` protocol and its two implementations).

On a terminal, input is edited with GNU readline's callback interface, so a line that
arrives while the user types clears the input line, prints, and redraws the prompt and the
half-typed text. Python's ``readline`` module does not expose that interface, so it is
reached through ``ctypes`` in the library the module has already loaded. Without it, or
when stdin is not a terminal, lines are read from the file descriptor and split here.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import signal
import sys
import unicodedata
from typing import Protocol, TextIO

from core.client_session import Prompt

READ_CHUNK = 64 * 1024


# --- console --------------------------------------------------------------------

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

    def status(self, text: str | None, *, redraw: bool = True) -> None:
        """Show ``text`` as a line redrawn in place above the input line (None: remove it);
        without ``redraw``, it appears with the next lines shown."""
        ...

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

    def status(self, text: str | None, *, redraw: bool = True) -> None:
        pass  # no line to redraw in place: a transcript shows only lines

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
        self._status: str | None = None  # the progress line, drawn just above the input line
        self._status_drawn = False

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
        # the lines go where the progress line was; it is drawn again below them
        self.out.write(self._erase_status() + "".join(line + "\n" for line in lines) + self._draw_status())
        self.out.flush()
        if self._installed:
            self._redisplay()

    def status(self, text: str | None, *, redraw: bool = True) -> None:
        self._status = text
        if not self._installed or not redraw:
            return  # drawn with the next lines shown
        self._clear_line()
        self._libc.fflush(None)
        self.out.write(self._erase_status() + self._draw_status())
        self.out.flush()
        self._redisplay()

    def _erase_status(self) -> str:
        """Escape sequences that take the cursor from the input line's first row up to the
        progress line's row and clear it (rl_clear_visible_line leaves it at that first row)."""
        if not self._status_drawn:
            return ""
        self._status_drawn = False
        return "\x1b[A\r\x1b[K"

    def _draw_status(self) -> str:
        if not self._status or not self._installed:
            return ""
        self._status_drawn = True
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            columns = 80
        return _fit(self._status, columns - 1) + "\n"  # one row: erasing moves up exactly one

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
            erase = self._erase_status()
            if erase:
                self.out.write(erase)
                self.out.flush()
            self._remove()  # also gives the terminal its settings back
            self._installed = False

    def close(self) -> None:
        self._uninstall()


def _fit(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` terminal cells (wide characters take two)."""
    width = 0
    for index, char in enumerate(text):
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if width > columns:
            return text[:index]
    return text


def open_console(out: TextIO) -> Console:
    if os.isatty(0) and out.isatty():
        try:
            return ReadlineConsole(out)
        except (ImportError, OSError, AttributeError):
            pass  # no GNU readline here: plain line reads still work
    return LineConsole(out)
