"""client.py at a terminal: readline editing, no password echo, lines arriving mid-typing."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from core.messages import Login, MsgSent, MsgTo, PrivateMessage, Welcome
from tests.client_harness import PROMPT, TerminalClient
from tests.harness import PASSWORDS, ServerProcess

readline = pytest.importorskip("readline")
if not hasattr(ctypes.CDLL(readline.__file__), "rl_clear_visible_line"):  # e.g. libedit
    pytest.skip("GNU readline 7 or later is needed for line editing", allow_module_level=True)


def test_terminal_session(server: ServerProcess, tmp_path: Path) -> None:
    client = TerminalClient(server.port, tmp_path / "client")
    try:
        client.expect("Please login")
        client.expect("Username: ")
        client.type("Luke\r")
        client.expect("Password: ")
        client.type(PASSWORDS["Luke"] + "\r")
        assert PASSWORDS["Luke"] not in client.expect("Welcome to TESSENGER!")  # never echoed
        client.expect(PROMPT + " ")  # the command prompt is the input line's prompt
        client.type("/msgto Le")
        client.expect("/msgto Le")
        # a message arrives while the user is typing: shown at once, the input line redrawn
        leia = server.connect()
        leia.send(Login("Leia", PASSWORDS["Leia"], 9))
        assert leia.recv() == Welcome("Leia")
        leia.send(MsgTo(["Luke"], "are you there?"))
        assert isinstance(leia.recv(), MsgSent)
        client.expect(", Leia: are you there?\r\n")
        client.expect(PROMPT + " /msgto Le")
        client.type("ia yes\r")
        client.expect("message sent at ")
        message = leia.recv()
        assert isinstance(message, PrivateMessage) and (message.sender, message.text) == ("Luke", "yes")
        client.expect(PROMPT + " ")
        client.type("half-typed")
        client.expect("half-typed")
        client.type("\x03")  # Ctrl-C: a clean logout
        client.expect("Bye, Luke!")
        assert client.process.wait(10) == 0
        server.output.expect("Luke logout")
    finally:
        client.stop()
