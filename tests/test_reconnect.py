"""Reconnecting after the connection is lost: the backoff, the session's states, and the real
client against a real server killed and restarted on the same port (or a scripted one)."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from core.client_session import (
    CONNECTION_LOST, GAVE_UP, NOT_CONNECTED, RECONNECTED, RECONNECTING, Ask, ClientSession, Connect,
    Exit, Print, Prompt, Send, State,
)
from core.messages import CheckUser, Code, Error, Login, UserOk, Welcome
from core.reconnect import Backoff
from tests.client_harness import PROMPT, ClientProcess, FakeServer
from tests.harness import PASSWORDS, ServerProcess
from tests.terminal_harness import PyteTerminal, client_argv, prompt_rows

ASK = Ask(Prompt.COMMAND)


def test_backoff_doubles_up_to_thirty_seconds_and_starts_again_after_a_success() -> None:
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 1


def logged_in(reconnect: bool = True) -> ClientSession:
    session = ClientSession(40000, file_size=len, reconnect=reconnect)
    session.start()
    session.line("Yoda", 0.0)
    session.received(UserOk(), 0.0)
    session.line("secret", 0.0)
    session.received(Welcome("Yoda"), 0.0)
    return session


def lost(session: ClientSession, now: float = 100.0) -> None:
    assert session.connection_lost(now) == [Print(RECONNECTING)]
    assert session.deadline() == now + 1


def test_a_lost_session_retries_with_backoff_and_logs_in_again_with_what_it_holds() -> None:
    session = logged_in()
    session.line("/msgto Luke hi", 99.0)  # in flight: its reply will never come
    lost(session)
    assert session.tick(100.5) == [] and session.tick(101.0) == [Connect()]
    assert session.deadline() is None  # the attempt is the shell's until it reports
    assert session.connect_failed(101.2) == [] and session.deadline() == 103.2
    assert session.tick(103.2) == [Connect()] and session.connect_failed(103.3) == []
    assert session.deadline() == 107.3
    assert session.tick(107.3) == [Connect()]
    assert session.connected(107.4) == [Send(CheckUser("Yoda"))]
    assert session.received(UserOk(), 107.5) == [Send(Login("Yoda", "secret", 40000))]
    assert session.received(Welcome("Yoda"), 107.6) == [Print(RECONNECTED), ASK]
    assert session.state is State.READY
    lost(session, 200.0)  # the backoff starts again at 1 s


def test_lines_typed_while_reconnecting_get_an_error_except_help_and_logout() -> None:
    session = logged_in()
    lost(session)
    assert session.line("/msgto Luke hi", 100.1) == [Print(NOT_CONNECTED), ASK]
    assert session.line("/nope", 100.2) == [Print("Error. Invalid command!"), ASK]
    assert len(session.line("/help", 100.3)) == 13
    assert session.line("/quit", 100.4) == [Print("Bye, Yoda!"), Exit(0)]


@pytest.mark.parametrize("refusal", [
    Error(Code.ALREADY_LOGGED_IN, "Yoda is already logged in"),
    Error(Code.BLOCKED, "Your account is blocked due to multiple login failures. Please try again later"),
    Error(Code.INVALID_PASSWORD, "Invalid Password. Please try again"),
])
@pytest.mark.parametrize("after_password", [False, True])
def test_a_refusal_at_either_login_step_ends_the_client_with_its_line(refusal: Error, after_password: bool) -> None:
    session = logged_in()
    lost(session)
    session.tick(101.0)
    session.connected(101.1)
    if after_password:
        session.received(UserOk(), 101.2)
    assert session.received(refusal, 101.3) == [Print(refusal.text), Exit(1)]


def test_ctrl_c_or_end_of_input_while_reconnecting_ends_the_client() -> None:
    session = logged_in()
    lost(session)
    assert session.interrupt(100.5) == [Print(GAVE_UP), Exit(1)]
    session = logged_in()
    lost(session)
    session.tick(101.0)
    session.connected(101.1)  # logging in again
    assert session.interrupt(101.2) == [Print(GAVE_UP), Exit(1)]
    session = logged_in()
    lost(session)
    assert session.end_of_input(100.5) == [Print("Bye, Yoda!"), Exit(0)]


def test_a_lost_connection_during_the_new_login_waits_longer_and_says_nothing() -> None:
    session = logged_in()
    lost(session)
    session.tick(101.0)
    session.connected(101.1)
    assert session.connection_lost(101.2) == [] and session.deadline() == 103.2


def test_without_reconnect_a_lost_connection_ends_the_client() -> None:
    assert logged_in(reconnect=False).connection_lost(1.0) == [Print(CONNECTION_LOST), Exit(1)]


# --- the real client ---------------------------------------------------------------------------

def test_the_client_reconnects_when_the_server_restarts_keeping_the_half_typed_line(tmp_path: Path) -> None:
    readline = pytest.importorskip("readline")
    if not hasattr(ctypes.CDLL(readline.__file__), "rl_clear_visible_line"):
        pytest.skip("GNU readline 7 or later is needed for line editing")
    data = tmp_path / "server"
    data.mkdir()
    server = ServerProcess(data)
    yoda = PyteTerminal(client_argv(server.port), tmp_path / "yoda")
    try:
        yoda.login("Yoda")
        yoda.type("/msgto Lu")
        yoda.wait_bottom(prompt_rows("/msgto Lu", 80))
        server.kill()
        yoda.wait_bottom([RECONNECTING, *prompt_rows("/msgto Lu", 80)])
        yoda.type("ke hi\r")
        yoda.wait_bottom([NOT_CONNECTED, *prompt_rows("", 80)])
        server = ServerProcess(data, port=server.port)
        yoda.wait_bottom([RECONNECTED, *prompt_rows("", 80)])
        server.output.expect(re.compile(r"Yoda login from 127\.0\.0\.1 .*"))
        luke = server.connect()
        luke.send(Login("Luke", PASSWORDS["Luke"], 9))
        assert luke.recv() == Welcome("Luke")
        yoda.type("/msgto Luke back\r")
        yoda.wait_for("message sent at T.")
        assert luke.recv().text == "back"
    finally:
        yoda.stop()
        server.stop()


@pytest.mark.parametrize("after_password", [False, True])
def test_a_refused_login_at_reconnect_ends_the_client_with_that_line(tmp_path: Path, after_password: bool) -> None:
    fake = FakeServer()
    client = ClientProcess(fake.port, tmp_path / "yoda", "--reconnect")
    try:
        fake.accept()
        client.type("Yoda", PASSWORDS["Yoda"])
        assert fake.recv() == CheckUser("Yoda")
        fake.send(UserOk())
        login = fake.recv()
        assert isinstance(login, Login) and login.password == PASSWORDS["Yoda"]
        fake.send(Welcome("Yoda"))
        client.output.until(PROMPT)
        assert fake.conn is not None
        fake.conn.close()  # the connection drops
        client.output.expect(re.escape(RECONNECTING))
        fake.accept()  # the next attempt, a second later
        assert fake.recv() == CheckUser("Yoda")
        if after_password:  # the order the server tells "already logged in" in is its own
            fake.send(UserOk())
            assert fake.recv() == login
        refusal = Error(Code.ALREADY_LOGGED_IN, "Yoda is already logged in")
        fake.send(refusal)
        assert client.output.rest() == [refusal.text]
        assert client.exit_code() == 1
    finally:
        client.stop()
        fake.close()
