"""The sans-I/O client session (core/client_session.py), driven without sockets or a terminal."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, strategies as st

from core.client_session import (
    CONNECTION_LOST, INVALID_PASSWORD, INVALID_USERNAME, LOGIN_CANCELLED, LOGOUT_WAIT, Ask,
    ClientSession, Download, Effect, Ended, Exit, Print, Prompt, Send, State, Upload,
)
from core.commands import COMMAND_PROMPT
from core.messages import (
    ActiveUser, ActiveUserEntry, ActiveUsers, Bye, CheckUser, Error, GroupCreated,
    GroupInvite, GroupMessage, GroupVideo, Login, Logout, MsgSent, MsgTo, P2PVideo, PrivateMessage,
    TransferEnded, TransferOffer, TransferReady, TransferTarget, UserOk, Welcome, encode, requests,
)
from core.render import printable

UDP_PORT = 40000
TS = "01 Jun 2023 15:00:01"
TID = "0123456789abcdef" * 2
KEY = "0123456789abcdef" * 4
FILES = {"test.mp4": 1234, "videos/clip.mp4": 99}


def file_size(path: str) -> int:
    if path not in FILES:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    return FILES[path]


def new_session() -> ClientSession:
    return ClientSession(UDP_PORT, file_size=file_size)


def logged_in(username: str = "Yoda") -> ClientSession:
    session = new_session()
    session.start()
    session.line(username, 0.0)
    session.received(UserOk(), 0.0)
    session.line("secret", 0.0)
    session.received(Welcome(username), 0.0)
    assert session.state is State.READY
    return session


def sent(effects: list[Effect]) -> list[object]:
    return [e.message for e in effects if isinstance(e, Send)]


def printed(effects: list[Effect]) -> list[str]:
    return [e.line for e in effects if isinstance(e, Print)]


ASK_COMMAND = Ask(Prompt.COMMAND)


# --- logging in --------------------------------------------------------------------------

def test_login_flow() -> None:
    session = new_session()
    assert session.start() == [Print("Please login"), Ask(Prompt.USERNAME)]
    assert session.waiting_for is Prompt.USERNAME
    assert session.line(" Yoda ", 0.0) == [Send(CheckUser("Yoda"))]
    assert session.waiting_for is None
    assert session.received(UserOk(), 0.0) == [Ask(Prompt.PASSWORD)]
    assert session.waiting_for is Prompt.PASSWORD
    assert session.line("wise@!manbaby", 0.0) == [Send(Login("Yoda", "wise@!manbaby", UDP_PORT))]
    assert session.received(Welcome("Yoda"), 0.0) == [Print("Welcome to TESSENGER!"), ASK_COMMAND]
    assert session.waiting_for is Prompt.COMMAND
    assert Prompt.COMMAND.value == COMMAND_PROMPT + " "


@pytest.mark.parametrize("code, text, again", [
    ("invalid_username", "Invalid Username. Please try again", Prompt.USERNAME),
    ("already_logged_in", "Yoda is already logged in", Prompt.USERNAME),
])
def test_refused_username_asks_the_username_again(code: str, text: str, again: Prompt) -> None:
    session = new_session()
    session.start()
    session.line("Yoda", 0.0)
    assert session.received(Error(code, text), 0.0) == [Print(text), Ask(again)]
    assert session.line("Luke", 0.0) == [Send(CheckUser("Luke"))]


def test_wrong_password_asks_the_password_again_and_already_logged_in_the_username() -> None:
    session = new_session()
    session.start()
    session.line("Yoda", 0.0)
    session.received(UserOk(), 0.0)
    session.line("nope", 0.0)
    assert session.received(Error("invalid_password", INVALID_PASSWORD), 0.0) == [
        Print(INVALID_PASSWORD), Ask(Prompt.PASSWORD)]
    session.line("again", 0.0)
    assert session.received(Error("already_logged_in", "Yoda is already logged in"), 0.0) == [
        Print("Yoda is already logged in"), Ask(Prompt.USERNAME)]


@pytest.mark.parametrize("step", ["check_user", "login"])
def test_blocked_exits_non_zero(step: str) -> None:
    session = new_session()
    session.start()
    session.line("Yoda", 0.0)
    if step == "login":
        session.received(UserOk(), 0.0)
        session.line("nope", 0.0)
    text = "Your account is blocked due to multiple login failures. Please try again later"
    assert session.received(Error("blocked", text), 0.0) == [Print(text), Exit(1)]
    assert session.line("more", 0.0) == []


def test_what_cannot_be_a_username_or_password_is_refused_without_asking_the_server() -> None:
    session = new_session()
    session.start()
    assert session.line("", 0.0) == [Ask(Prompt.USERNAME)]
    assert session.line("two words", 0.0) == [Print(INVALID_USERNAME), Ask(Prompt.USERNAME)]
    assert session.line("x" * 65, 0.0) == [Print(INVALID_USERNAME), Ask(Prompt.USERNAME)]
    session.line("Yoda", 0.0)
    session.received(UserOk(), 0.0)
    assert session.line("", 0.0) == [Ask(Prompt.PASSWORD)]
    assert session.line("has space", 0.0) == [Print(INVALID_PASSWORD), Ask(Prompt.PASSWORD)]
    assert session.line("p" * 257, 0.0) == [Print(INVALID_PASSWORD), Ask(Prompt.PASSWORD)]


def test_answers_typed_ahead_wait_for_their_question() -> None:
    session = new_session()
    session.start()
    assert session.line("Yoda", 0.0) == [Send(CheckUser("Yoda"))]
    assert session.line("pw", 0.0) == []
    assert session.line("/activeuser", 0.0) == []
    assert session.received(UserOk(), 0.0) == [Ask(Prompt.PASSWORD), Send(Login("Yoda", "pw", UDP_PORT))]
    assert session.received(Welcome("Yoda"), 0.0) == [
        Print("Welcome to TESSENGER!"), ASK_COMMAND, Send(ActiveUser())]


@pytest.mark.parametrize("when", ["username", "checking", "password"])
def test_end_of_input_while_logging_in_exits_non_zero(when: str) -> None:
    session = new_session()
    session.start()
    if when != "username":
        session.line("Yoda", 0.0)
    if when == "password":
        session.received(UserOk(), 0.0)
    effects = session.end_of_input(0.0)
    if when == "checking":  # the answer to the question in flight comes first
        assert effects == []
        effects = session.received(UserOk(), 0.0)[1:]
    assert effects == [Print(LOGIN_CANCELLED), Exit(1)]


def test_interrupt_while_logging_in_exits_non_zero() -> None:
    session = new_session()
    session.start()
    assert session.interrupt(0.0) == [Print(LOGIN_CANCELLED), Exit(1)]


# --- commands ----------------------------------------------------------------------------

def test_one_command_at_a_time_and_pushes_meanwhile() -> None:
    session = logged_in()
    assert session.line("/msgto Luke hi", 0.0) == [Send(MsgTo(["Luke"], "hi"))]
    assert session.line("/activeuser", 0.0) == []  # queued until the reply
    assert session.received(PrivateMessage("Leia", "psst", TS), 0.0) == [Print(f"{TS}, Leia: psst")]
    assert session.received(MsgSent("Luke", TS), 0.0) == [
        Print(f"message sent at {TS}."), ASK_COMMAND, Send(ActiveUser())]
    assert session.received(ActiveUsers([]), 0.0) == [Print("no other active user"), ASK_COMMAND]


def test_counted_msgto_waits_for_one_reply_per_distinct_receiver() -> None:
    session = logged_in()
    effects = session.line("/msgto 3 Luke Leia Luke hi", 0.0)
    assert sent(effects) == [MsgTo(["Luke", "Leia", "Luke"], "hi")]
    assert session.received(MsgSent("Luke", TS), 0.0) == [Print(f"message sent at {TS}.")]
    assert session.received(Error("command", "Error. Leia is not active."), 0.0) == [
        Print("Error. Leia is not active."), ASK_COMMAND]


def test_replies_render_as_in_the_spec() -> None:
    session = logged_in()
    session.line("/activeuser", 0.0)
    users = [ActiveUserEntry("Luke", "10.0.0.2", 6000, TS), ActiveUserEntry("Leia", "10.0.0.3", 6001, TS)]
    assert printed(session.received(ActiveUsers(users), 0.0)) == [
        f"Luke, 10.0.0.2, 6000, active since {TS}.", f"Leia, 10.0.0.3, 6001, active since {TS}."]
    session.line("/creategroup g1 Luke Leia", 0.0)
    assert printed(session.received(GroupCreated("g1", ["Yoda", "Luke", "Leia"]), 0.0)) == [
        "Group chat room has been created, room name: g1, users in this room: Yoda Luke Leia"]
    assert session.received(GroupInvite("g2", "Hans"), 0.0) == [
        Print("Hans added you to group chat g2. Use /joingroup g2 to join.")]
    assert session.received(GroupMessage("g1", "Luke", "hey", TS), 0.0) == [Print(f"{TS}, g1, Luke: hey")]


def test_local_errors_and_help_prompt_again_without_sending() -> None:
    session = logged_in()
    assert session.line("/nope", 0.0) == [Print("Error. Invalid command!"), ASK_COMMAND]
    assert session.line("/msgto Luke", 0.0) == [Print("Error. Usage: /msgto USERNAME MESSAGE"), ASK_COMMAND]
    assert session.line("", 0.0) == [ASK_COMMAND]
    effects = session.line("/help", 0.0)
    assert effects[-1] == ASK_COMMAND and len(printed(effects)) == 12 and not sent(effects)


def test_a_command_too_long_for_one_frame_is_not_sent() -> None:
    session = logged_in()
    names = " ".join(f"{'é' * 60}{i}" for i in range(600))  # under 1,000 names, over 64 KiB
    assert session.line(f"/msgto 600 {names} hi", 0.0) == [
        Print("Error. The command is too long to send."), ASK_COMMAND]


def test_p2pvideo_checks_the_file_then_sends_its_basename_and_size() -> None:
    session = logged_in()
    assert session.line("/p2pvideo Luke missing.mp4", 0.0) == [
        Print("Error. File missing.mp4 does not exist."), ASK_COMMAND]
    assert session.line("/p2pvideo Luke videos/clip.mp4", 0.0) == [Send(P2PVideo("Luke", "clip.mp4", 99))]
    ready = TransferReady("clip.mp4", [TransferTarget("Luke", "10.0.0.2", 6000, TID, KEY)])
    assert session.received(ready, 0.0) == [Upload("videos/clip.mp4", ready, 99), ASK_COMMAND]


def test_groupvideo_and_unreadable_files() -> None:
    def unreadable(path: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    session = ClientSession(UDP_PORT, file_size=unreadable)
    session.start()
    session.line("Yoda", 0.0)
    session.received(UserOk(), 0.0)
    session.line("pw", 0.0)
    session.received(Welcome("Yoda"), 0.0)
    assert session.line("/groupvideo g1 test.mp4", 0.0) == [
        Print("Error. Cannot read test.mp4: Permission denied."), ASK_COMMAND]
    session = logged_in()
    assert sent(session.line("/groupvideo g1 test.mp4", 0.0)) == [GroupVideo("g1", "test.mp4", 1234)]


def test_transfer_offers_go_to_the_transfer_engine() -> None:
    session = logged_in()
    offer = TransferOffer("Luke", "test.mp4", 10, "10.0.0.2", 6000, TID, KEY)
    assert session.received(offer, 0.0) == [Download(offer)]


def test_groupvideo_uploads_name_the_group_and_the_announced_size() -> None:
    session = logged_in()
    session.line("/groupvideo g1 test.mp4", 0.0)
    ready = TransferReady("test.mp4", [TransferTarget("Luke", "10.0.0.2", 6000, TID, KEY)])
    assert session.received(ready, 0.0) == [Upload("test.mp4", ready, 1234, "g1"), ASK_COMMAND]


# --- leaving -----------------------------------------------------------------------------

def test_logout_waits_for_bye() -> None:
    session = logged_in()
    assert session.line("/logout", 5.0) == [Send(Logout())]
    assert session.deadline() == 5.0 + LOGOUT_WAIT
    assert session.line("/activeuser", 5.1) == []  # nothing more after /logout
    assert session.received(Bye("Yoda"), 5.2) == [Print("Bye, Yoda!"), Exit(0)]


def test_logout_gives_up_waiting_for_bye() -> None:
    session = logged_in()
    session.line("/logout", 5.0)
    assert session.tick(5.0 + LOGOUT_WAIT - 0.01) == []
    assert session.tick(5.0 + LOGOUT_WAIT) == [Print("Bye, Yoda!"), Exit(0)]


def test_logout_when_the_server_is_already_gone() -> None:
    session = logged_in()
    session.line("/logout", 0.0)
    assert session.connection_lost(0.1) == [Print("Bye, Yoda!"), Exit(0)]


def test_end_of_input_runs_the_queued_lines_then_logs_out() -> None:
    session = logged_in()
    session.line("/activeuser", 0.0)
    session.line("/msgto Luke hi", 0.0)
    assert session.end_of_input(0.0) == []
    assert session.received(ActiveUsers([]), 0.0) == [
        Print("no other active user"), ASK_COMMAND, Send(MsgTo(["Luke"], "hi"))]
    assert session.received(MsgSent("Luke", TS), 0.0) == [
        Print(f"message sent at {TS}."), ASK_COMMAND, Send(Logout())]


def test_interrupt_logs_out_at_once_and_a_second_one_stops_waiting() -> None:
    session = logged_in()
    session.line("/activeuser", 0.0)
    session.line("/msgto Luke queued", 0.0)
    assert session.interrupt(0.0) == [Send(Logout())]
    # the reply to the command in flight is still shown; the queued line is dropped
    assert session.received(ActiveUsers([]), 0.0) == [Print("no other active user")]
    assert session.interrupt(0.1) == [Print("Bye, Yoda!"), Exit(0)]


def test_a_reply_to_a_transfer_after_logout_only_cancels_it() -> None:
    session = logged_in()
    session.line("/p2pvideo Luke test.mp4", 0.0)
    session.interrupt(0.0)
    ready = TransferReady("test.mp4", [TransferTarget("Luke", "10.0.0.2", 6000, TID, KEY)])
    assert session.received(ready, 0.0) == [Upload("test.mp4", ready, 1234, cancelled=True)]


def test_the_end_of_a_transfer_pushed_by_the_server_goes_to_the_engine() -> None:
    session = logged_in()
    ended = TransferEnded(TID, "Luke")
    assert session.received(ended, 0.0) == [Ended(ended)]


@pytest.mark.parametrize("state", ["login", "ready", "busy"])
def test_lost_connection_exits_non_zero(state: str) -> None:
    session = new_session() if state == "login" else logged_in()
    session.start()
    if state == "busy":
        session.line("/activeuser", 0.0)
    assert session.connection_lost(0.0) == [Print(CONNECTION_LOST), Exit(1)]
    assert session.connection_lost(0.0) == []


def test_protocol_errors_and_garbage_from_the_server_exit_non_zero() -> None:
    session = logged_in()
    assert session.received(Error("protocol", "Error. Bad request."), 0.0) == [Print("Error. Bad request."), Exit(1)]
    session = logged_in()
    assert session.bad_message("frame too long") == [
        Print("Error. The server sent an invalid message (frame too long)."), Exit(1)]


# --- properties --------------------------------------------------------------------------

command_lines = st.builds(
    lambda head, parts: head + " ".join(parts),
    st.sampled_from(["/msgto ", "/msgto 2 ", "/creategroup ", "/joingroup ", "/groupmsg ", "/p2pvideo ",
                     "/groupvideo ", "/activeuser", "/help", "/logout", "x"]),
    st.lists(st.one_of(st.text(max_size=70), st.sampled_from(["Luke", "test.mp4", "g1", "3"])), max_size=5),
)


@given(command_lines)
def test_every_line_gets_a_valid_request_or_one_error_line_and_the_prompt(line: str) -> None:
    session = logged_in()
    effects = session.line(line, 0.0)
    requests_sent = sent(effects)
    if requests_sent:
        assert len(effects) == 1
        (request,) = requests_sent
        assert requests.decode(encode(request)) == request  # the server will not call it malformed
    elif effects != [ASK_COMMAND]:
        lines = printed(effects)
        assert effects[-1] == ASK_COMMAND and lines
        assert all("\n" not in printable(line) for line in lines)
