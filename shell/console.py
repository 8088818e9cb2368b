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
import select
import signal
import sys
from typing import Callable, Protocol, TextIO

from core import screen
from core.client_session import Prompt

READ_CHUNK = 64 * 1024


# --- console --------------------------------------------------------------------

Line = str | None  # None: end of input
Completer = Callable[[str, str], list[str]]  # (the line before the word, the word) -> words


class Console(Protocol):
    """The user's side: lines typed in, lines shown, prompts."""

    hides_input: bool  # a password must be read with read_secret (a terminal)
    wants_input: bool  # read stdin now (otherwise what is typed waits for the next prompt)

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

    def resize(self) -> None:
        """The terminal changed size (SIGWINCH)."""
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
        self.wants_input = True  # the session queues lines typed ahead
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

    def resize(self) -> None:
        pass  # lines do not care

    def close(self) -> None:
        pass


def _decode(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")


_LINE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class ReadlineConsole:
    """A terminal edited by GNU readline in callback mode (see the module's docstring).

    The bottom of the screen is this console's: the progress line (when there is one) and,
    below it, readline's input line (the prompt and the text typed, wrapped over as many
    rows as it needs). Readline redraws the input line; the progress line is drawn only
    while readline is idle, directly above the input line's first row, and erased before
    anything can move that row — a line shown, a key handled (Enter, a completion list), a
    prompt asked — so it is always exactly one row in a known place.

    Keys are read only while a prompt waits for a line: what is typed (or pasted) after a
    line is taken stays in the terminal until the next prompt, so each command shows after
    its own prompt, with its result below it.
    """

    hides_input = True

    def __init__(self, out: TextIO, complete: Completer | None = None) -> None:
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
        self._set_screen_size = rl.rl_set_screen_size
        self._line_buffer = ctypes.c_char_p.in_dll(rl, "rl_line_buffer")
        self._point = ctypes.c_int.in_dll(rl, "rl_point")
        self._append_character = ctypes.c_int.in_dll(rl, "rl_completion_append_character")
        # Python, not readline, handles Ctrl-C (as a clean logout) and resizes (in the loop)
        ctypes.c_int.in_dll(rl, "rl_catch_signals").value = 0
        ctypes.c_int.in_dll(rl, "rl_catch_sigwinch").value = 0
        readline.parse_and_bind("set enable-bracketed-paste off")  # a pasted line break ends a line
        readline.parse_and_bind("tab: complete")
        readline.set_completer_delims(" ")
        readline.set_completer(self._completion if complete else None)
        self._complete = complete
        self._matches: list[str] = []
        self._encoding = sys.stdin.encoding or "utf-8"
        self._handler = _LINE_HANDLER(self._on_line)  # kept referenced while readline holds it
        self._lines: list[Line] = []
        self._installed = False
        self._prompt_text = ""
        self.wants_input = False  # a prompt waits for a line
        self._status: str | None = None  # the progress line
        self._status_shown = ""  # the progress line as drawn, "" when not drawn
        self._columns = self._terminal_size().columns

    def fileno(self) -> int:
        return 0

    def _terminal_size(self) -> os.terminal_size:
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            return os.terminal_size((80, 24))
        return size if size.columns else os.terminal_size((80, 24))

    # --- input ---------------------------------------------------------------------------

    def _on_line(self, pointer: int | None) -> None:
        self.wants_input = False  # taken: the next keys wait for the next prompt
        # no prompt until the session asks for the next line (set here, before readline
        # shows the prompt for the next line)
        self._set_prompt(b"")
        self._prompt_text = ""
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

    def read(self) -> list[Line]:
        """Hand readline the keys waiting, one at a time, until a line is taken."""
        if self._status_shown:  # keys may move the input line's first row: no progress line
            self._hide()
            self._redisplay()
        while self.wants_input and _readable(0):
            self._read_char()
        if self._status and self._installed:
            self._hide()
            self._reveal()
        lines, self._lines = self._lines, []
        return lines

    def read_secret(self, prompt: Prompt) -> list[Line]:
        lines = read_password(prompt)
        self._prompt("")
        return lines

    def _completion(self, word: str, state: int) -> str | None:
        """readline's completer: the ``state``-th word that completes ``word``."""
        if state == 0:
            assert self._complete is not None
            self._append_character.value = ord(" ")  # after a whole word (Python sets none)
            before = self._readline.get_line_buffer()[:self._readline.get_begidx()]
            self._matches = self._complete(before, word)
        return self._matches[state] if state < len(self._matches) else None

    # --- output --------------------------------------------------------------------------

    def show(self, lines: list[str]) -> None:
        """Show ``lines`` above the progress line and the input line."""
        self._hide()
        rows = [row for line in lines for row in screen.wrap(line, self._columns)]
        self.out.write("".join(row + "\n" for row in rows))
        self.out.flush()
        self._reveal()

    def status(self, text: str | None, *, redraw: bool = True) -> None:
        self._status = text
        if redraw and self._status_shown != self._fitted_status():
            self._hide()
            self._reveal()

    def _fitted_status(self) -> str:
        return screen.fit(self._status, self._columns - 1) if self._status else ""  # one row

    def _hide(self) -> None:
        """Clear the input line and the progress line above it, leaving the cursor where the
        first of them began."""
        if not self._installed:
            return
        self._clear_line()  # leaves the cursor at the start of the input line's first row
        self._libc.fflush(None)  # readline writes through C stdio, this file through Python's
        if self._status_shown:
            self.out.write("\x1b[A\r\x1b[K")  # the input line below is already clear
            self.out.flush()
            self._status_shown = ""

    def _reveal(self) -> None:
        """Draw the progress line and the input line below it from the cursor's row."""
        if not self._installed:
            return
        self._status_shown = self._fitted_status()
        if self._status_shown:
            self.out.write(self._status_shown + "\n")
            self.out.flush()
        self._redisplay()

    def resize(self) -> None:
        """The terminal changed size: clear the rows this console owns as the terminal now
        lays them out, and draw them again at the new width.

        Terminals that rewrap on resize (tmux, VTE, kitty, iTerm2) move the wrapped input line
        to ``columns``-wide rows, and a progress line wider than the new width onto two rows:
        the rows above the cursor are counted that way. (Terminals that cut rows instead, like
        xterm, may keep a stale row or lose one above the prompt when narrowed.)
        """
        size = self._terminal_size()
        columns = size.columns
        if columns == self._columns:
            return
        self._columns = columns
        self._set_screen_size(size.lines, columns)  # readline's own idea of it
        if not self._installed:
            return
        typed = (self._line_buffer.value or b"")[:self._point.value].decode(self._encoding, "replace")
        up = screen.cells(self._prompt_text + typed) // columns
        if self._status_shown:
            up += screen.rows(screen.cells(self._status_shown), columns)
        self._libc.fflush(None)
        self.out.write("\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J")
        self.out.flush()
        self._status_shown = ""
        # readline lays the prompt out over rows when it is set: set it again at the new width
        self._set_prompt(self._prompt_text.encode(self._encoding, "replace"))
        self._reveal()

    # --- prompts -------------------------------------------------------------------------

    def ask(self, prompt: Prompt) -> None:
        if prompt is Prompt.PASSWORD:
            self._uninstall()  # read_secret reads it; readline would echo it
        else:
            self._prompt(prompt.value)
            self.wants_input = True

    def _prompt(self, text: str) -> None:
        encoded = text.encode(self._encoding, "replace")
        self._prompt_text = text
        if self._installed:
            self._hide()
            self._set_prompt(encoded)
            self._reveal()
        else:
            self._install(encoded, self._handler)
            self._installed = True
            if self._status:
                self._hide()
                self._reveal()

    def _uninstall(self) -> None:
        if self._installed:
            self._hide()
            self._remove()  # also gives the terminal its settings back
            self._installed = False
            self.wants_input = False

    def close(self) -> None:
        self._uninstall()


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def take_terminal() -> Callable[[], None]:
    """Make this process the terminal's foreground process group, so that Ctrl-C reaches
    the client alone and not a ``make`` that started it (which would report an error though
    the client logged out cleanly); returns how to give the terminal back.

    Nothing happens when stdin is no terminal, when the process already leads its group (a
    shell's job) or is not in the foreground. When it does, Ctrl-Z is ignored: it would stop
    the client alone, and the shell, waiting for make, would never get the terminal back."""
    try:
        previous = os.tcgetpgrp(0)
        if previous != os.getpgrp() or os.getpid() == os.getpgrp():
            return lambda: None
        os.setpgid(0, 0)
        _set_foreground(os.getpgrp())
    except OSError:
        return lambda: None
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    return lambda: _set_foreground(previous)


def _set_foreground(group: int) -> None:
    # a process outside the foreground group is stopped by SIGTTOU when it changes it
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, group)
    except OSError:
        pass  # the group is gone: the shell takes the terminal back itself
    finally:
        signal.signal(signal.SIGTTOU, previous)


def open_console(out: TextIO, complete: Completer | None = None) -> Console:
    if os.isatty(0) and out.isatty():
        try:
            return ReadlineConsole(out, complete)
        except (ImportError, OSError, AttributeError):
            pass  # no GNU readline here: plain line reads still work
    return LineConsole(out)
