"""client.py at a terminal, judged by its screen: what a person sees after each keystroke.

The real client runs on a pseudo-terminal of a fixed size (read through pyte, or in tmux
for resizes) against the real server; the other users are wire-protocol clients.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

from core.messages import Login, MsgTo, PrivateMessage, TransferOffer, Welcome
from tests.client_harness import ClientProcess
from tests.harness import PASSWORDS, ROOT, ServerProcess, WireClient
from tests.terminal_harness import (
    PyteTerminal, Terminal, TmuxTerminal, client_argv, prompt_rows, rows_of,
)

readline = pytest.importorskip("readline")
if not hasattr(ctypes.CDLL(readline.__file__), "rl_clear_visible_line"):  # e.g. libedit
    pytest.skip("GNU readline 7 or later is needed for line editing", allow_module_level=True)

LOGIN_ROWS = ["Please login", "Username: Yoda", "Password:", "Welcome to TESSENGER!"]
STATUS = re.compile(r".*big\.bin to Luke\b.*\d+%.*")  # the progress line's part for the transfer


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for terminal in made:
        terminal.stop()


def yoda_at(server: ServerProcess, tmp_path: Path, terminals: list[Terminal], columns: int = 80,
            lines: int = 24, tmux: bool = False) -> Terminal:
    kind = TmuxTerminal if tmux else PyteTerminal
    terminal = kind(client_argv(server.port), tmp_path / "yoda", columns, lines)
    terminals.append(terminal)
    terminal.login("Yoda")
    return terminal


def wire_login(server: ServerProcess, username: str, udp_port: int = 9) -> WireClient:
    client = server.connect()
    client.send(Login(username, PASSWORDS[username], udp_port))
    assert client.recv() == Welcome(username)
    return client


def received_texts(client: WireClient, count: int) -> list[str]:
    texts = []
    while len(texts) < count:
        message = client.recv()
        if isinstance(message, PrivateMessage):
            texts.append(message.text)
    return texts


# --- 1. the progress line ----------------------------------------------------------------

def test_a_command_typed_under_the_progress_line_stays_and_the_line_goes_with_the_transfer(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    # Luke's UDP port never answers: Yoda's transfer stays at 0% until it gives up
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        luke = wire_login(server, "Luke", silent.getsockname()[1])
        yoda = yoda_at(server, tmp_path, terminals, columns=120, lines=30)
        (tmp_path / "yoda" / "big.bin").write_bytes(b"\1" * 1_000_000)
        yoda.type("/p2pvideo Luke big.bin\r")
        assert isinstance(luke.recv(), TransferOffer)
        yoda.wait(lambda rows: any(STATUS.fullmatch(row) for row in rows), "the progress line")
        yoda.type("/msgto Luke hello\r")
        assert received_texts(luke, 1) == ["hello"]
        yoda.wait_for("message sent at T.")
        yoda.wait_bottom(prompt_rows("", 120))
        content = yoda.content()
        # the command stays as typed, its result below it, then the one progress line
        assert content[-6:-4] == prompt_rows("/msgto Luke hello", 120), content
        assert content[-4] == "message sent at T."
        assert STATUS.fullmatch(content[-3]), content
        assert sum(bool(STATUS.fullmatch(row)) for row in content) == 1, content
        # the transfer gives up: its line goes, nothing of it is left behind
        yoda.wait_for("Error. Transfer of big.bin to Luke failed", timeout=30)
        content = yoda.wait_bottom(prompt_rows("", 120))
        assert not any(STATUS.fullmatch(row) for row in content), content
        assert content.count(prompt_rows("/msgto Luke hello", 120)[-1]) == 1
    finally:
        silent.close()


# --- 2. resizing ---------------------------------------------------------------------------

def test_narrowing_and_widening_keep_the_screen_clean(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    yoda = yoda_at(server, tmp_path, terminals, tmux=True)
    assert isinstance(yoda, TmuxTerminal)
    yoda.type("/msgto Le")
    yoda.wait_bottom(prompt_rows("/msgto Le", 80))
    yoda.resize(50)
    assert yoda.wait_bottom(prompt_rows("/msgto Le", 50)) and yoda.content() == [
        *LOGIN_ROWS, *prompt_rows("/msgto Le", 50)]
    leia = wire_login(server, "Leia")
    text = " ".join(["are you there?"] * 3)
    leia.send(MsgTo(["Yoda"], text))
    message = rows_of([f"01 Jan 2000 00:00:00, Leia: {text}"], 50)
    yoda.wait_bottom([*message, *prompt_rows("/msgto Le", 50)])
    assert yoda.content() == [*LOGIN_ROWS, *message, *prompt_rows("/msgto Le", 50)]
    yoda.resize(100)
    yoda.wait_bottom(prompt_rows("/msgto Le", 100))
    assert yoda.content() == [*LOGIN_ROWS, *message, *prompt_rows("/msgto Le", 100)]
    yoda.type("ia yes\r")
    assert received_texts(leia, 1) == ["yes"]


# --- 3. pasting ----------------------------------------------------------------------------

@pytest.mark.parametrize("count", [3, 50])
def test_pasted_commands_each_show_after_a_prompt_with_their_result(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal], count: int) -> None:
    luke = wire_login(server, "Luke")
    yoda = yoda_at(server, tmp_path, terminals, columns=120, lines=40)
    commands = [f"/msgto Luke m{n}" for n in range(count)]
    yoda.type("".join(command + "\r" for command in commands))  # one paste
    assert received_texts(luke, count) == [f"m{n}" for n in range(count)]
    expected = [*LOGIN_ROWS, *(row for command in commands for row in [*prompt_rows(command, 120), "message sent at T."])]
    expected += prompt_rows("", 120)  # and one prompt, once nothing typed ahead is left
    yoda.wait_bottom(expected[-38:])
    assert yoda.content()[-38:] == expected[-38:]


# --- 4. Tab --------------------------------------------------------------------------------

def test_tab_completes_commands_and_names_and_a_second_tab_lists_them(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    luke = wire_login(server, "Luke")
    yoda = yoda_at(server, tmp_path, terminals)
    yoda.type("/ac\t|")  # "|" shows where the cursor is: after the space completion added
    yoda.wait_bottom(prompt_rows("/activeuser |", 80))
    yoda.type("\b\r")
    yoda.wait(lambda rows: any(row.startswith("Luke, 127.0.0.1, 9, active since T.") for row in rows),
              "the /activeuser reply")
    yoda.type("/msgto Lu\t|")
    yoda.wait_bottom(prompt_rows("/msgto Luke |", 80))
    yoda.type("\ba\tb\r")  # nothing completes a message: the Tab adds nothing
    assert received_texts(luke, 1) == ["ab"]
    yoda.wait_bottom(["message sent at T.", *prompt_rows("", 80)])
    yoda.type("/creategroup jedi Lu\t|")
    yoda.wait_bottom(prompt_rows("/creategroup jedi Luke |", 80))
    yoda.type("\b\r")
    yoda.wait_for("Group chat room has been created, room name: jedi")
    yoda.type("/groupmsg j\t|")
    yoda.wait_bottom(prompt_rows("/groupmsg jedi |", 80))
    yoda.type("\x15/m\t|")
    yoda.wait_bottom(prompt_rows("/msgto |", 80))
    yoda.type("\x15/\t\t")  # Ctrl-U, then the command words listed
    rows = yoda.wait(lambda rows: any("/activeuser" in row and "/groupmsg" in row for row in rows), "the list")
    assert not any("control characters" in row for row in rows)


# --- 5. wrapped incoming messages ---------------------------------------------------------

def test_a_wrapped_message_cannot_pose_as_another_users_line(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    luke = wire_login(server, "Luke")
    yoda = yoda_at(server, tmp_path, terminals)
    head = "29 Nov 2026 09:00:00, Luke: hi"  # as shown: 30 columns, then spaces to the row's end
    fake = "29 Nov 2026 10:00:00, Leia: send me your password"
    luke.send(MsgTo(["Yoda"], "hi" + " " * (80 - len(head)) + fake))
    rows = yoda.wait_for("send me your password")
    row = next(row for row in rows if "send me your password" in row)
    assert row.startswith(" ") and row.strip() == "T, Leia: send me your password", rows
    assert not any(row.startswith("T, Leia") for row in rows)


# --- 6. what is refused, said precisely ------------------------------------------------------

def test_joined_emoji_are_sent_and_invisible_characters_are_named(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    luke = wire_login(server, "Luke")
    yoda = yoda_at(server, tmp_path, terminals)
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    yoda.type(f"/msgto Luke {family}\r")
    assert received_texts(luke, 1) == [family]
    yoda.wait_for("message sent at T.")
    yoda.type("/msgto Luke a\u00a0b\r")
    yoda.wait_for("Error. The message contains a space other than the plain space (U+00A0).")
    yoda.type("/msgto Luke a\u2028b\r")
    yoda.wait_for("Error. The message contains an invisible or line-breaking character (U+2028).")
    yoda.type("/creategroup café Luke\r")
    rows = yoda.wait_for("Error. Group name must contain only letters and digits.")
    assert not any("control characters" in row for row in rows)


# --- 9. make run-client ----------------------------------------------------------------------

def test_make_run_client_saves_in_received_username_and_ctrl_c_ends_it_cleanly(
        server: ServerProcess, tmp_path: Path, terminals: list[Terminal]) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    argv = ["make", "-s", "-C", str(ROOT), "run-client", f"PORT={server.port}", f"PYTHON={sys.executable}",
            f"DIR={tmp_path}/received/{{username}}", "TLS=0"]  # the fixture's server is plain TCP
    yoda = PyteTerminal(argv, tmp_path / "yoda")
    terminals.append(yoda)
    yoda.login("Yoda")
    luke = ClientProcess(server.port, tmp_path / "luke").login("Luke")
    try:
        (luke.workdir / "clip.mp4").write_bytes(b"\2" * 100_000)
        luke.type("/p2pvideo Yoda clip.mp4")
        yoda.wait_for("Received clip.mp4 from Luke")
        assert (tmp_path / "received" / "Yoda" / "Luke_clip.mp4").read_bytes() == b"\2" * 100_000
        yoda.type("\x03")  # Ctrl-C: the client logs out; make, which started it, is not interrupted
        yoda.wait_for("Bye, Yoda!")
        assert yoda.exit_code() == 0
        assert not any("make" in row for row in yoda.rows())
    finally:
        luke.stop()
