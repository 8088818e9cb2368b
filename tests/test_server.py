"""The real server.py over real sockets, driven by a test client speaking the protocol."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.messages import (
    ActiveUser, ActiveUsers, Bye, CheckUser, CreateGroup, Error, GroupCreated, GroupInvite,
    GroupJoined, GroupMessage, GroupMsg, GroupSent, GroupVideo, JoinGroup, Login, Logout,
    MsgSent, MsgTo, P2PVideo, PrivateMessage, TransferEnded, TransferOffer, TransferReady, UserOk, Welcome,
)
from tests.harness import PASSWORDS, ROOT, ServerProcess, WireClient, wait_for

TIMESTAMP = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d"


def login(server: ServerProcess, username: str, udp_port: int = 7000) -> WireClient:
    client = server.connect()
    client.send(Login(username, PASSWORDS[username], udp_port))
    assert client.recv() == Welcome(username)
    return client


def error_text(client: WireClient) -> str:
    reply = client.recv()
    assert isinstance(reply, Error), reply
    return reply.text


def userlog_names(server: ServerProcess) -> list[str]:
    return [line.split("; ")[2] for line in server.log("userlog.txt").splitlines()]


# --- §4 logging in ------------------------------------------------------------------------

def test_check_user_accepts_known_and_refuses_unknown(server: ServerProcess) -> None:
    client = server.connect()
    client.send(CheckUser("Yoda"))
    assert client.recv() == UserOk()
    client.send(CheckUser("yoda"))  # case-sensitive
    assert client.recv() == Error("invalid_username", "Invalid Username. Please try again")


def test_wrong_password_then_block_then_blocked_everywhere(server: ServerProcess) -> None:
    first, second = server.connect(), server.connect()
    first.send(Login("Luke", "nope", 7000))
    assert client_error(first) == ("invalid_password", "Invalid Password. Please try again")
    second.send(Login("Luke", "wrong", 7001))  # failures add up across connections
    assert client_error(second) == ("invalid_password", "Invalid Password. Please try again")
    first.send(Login("Luke", "still", 7000))
    assert client_error(first) == (
        "blocked", "Invalid Password. Your account has been blocked. Please try again later")
    assert first.closed_by_server()
    third = server.connect()
    third.send(Login("Luke", PASSWORDS["Luke"], 7002))  # even with the right password
    assert client_error(third) == (
        "blocked", "Your account is blocked due to multiple login failures. Please try again later")
    fourth = server.connect()
    fourth.send(CheckUser("Luke"))  # the username step tells nothing about the block...
    assert fourth.recv() == UserOk()
    fourth.send(Login("Luke", "any", 7003))  # ...a password, any password, is told it
    assert client_error(fourth)[0] == "blocked"
    # others are unaffected
    login(server, "Leia")


def client_error(client: WireClient) -> tuple[str, str]:
    reply = client.recv()
    assert isinstance(reply, Error), reply
    return reply.code, reply.text


def test_block_ends_after_block_time(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, 1, "--block-seconds", "0.5")
    try:
        client = server.connect()
        client.send(Login("Yoda", "bad", 7000))
        assert client_error(client)[0] == "blocked"

        def logged_in() -> bool:
            probe = server.connect()
            probe.send(Login("Yoda", PASSWORDS["Yoda"], 7000))
            return isinstance(probe.recv(), Welcome)

        wait_for(logged_in, what="the block to end")
    finally:
        server.stop()


def test_success_resets_failure_count(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, 2)
    try:
        client = server.connect()
        client.send(Login("Yoda", "bad", 7000))
        assert client_error(client)[0] == "invalid_password"
        client.send(Login("Yoda", PASSWORDS["Yoda"], 7000), Logout())
        assert client.recv() == Welcome("Yoda")
        assert client.recv() == Bye("Yoda")
        again = server.connect()
        again.send(Login("Yoda", "bad", 7000))
        assert client_error(again) == ("invalid_password", "Invalid Password. Please try again")
    finally:
        server.stop()


def test_duplicate_login_refused(server: ServerProcess) -> None:
    yoda = login(server, "Yoda")
    other = server.connect()
    other.send(CheckUser("Yoda"))  # who is online is not told at the username step...
    assert other.recv() == UserOk()
    other.send(Login("Yoda", "wrong", 7001))  # ...nor to a wrong password
    assert client_error(other) == ("invalid_password", "Invalid Password. Please try again")
    other.send(Login("Yoda", PASSWORDS["Yoda"], 7001))
    assert client_error(other) == ("already_logged_in", "Yoda is already logged in")


def test_request_before_login_is_refused_and_closed(server: ServerProcess) -> None:
    client = server.connect()
    client.send(MsgTo(["Yoda"], "hi"))
    assert client_error(client)[0] == "protocol"
    assert client.closed_by_server()


# --- §5 commands --------------------------------------------------------------------------

def test_private_message_delivered_logged_and_announced(server: ServerProcess) -> None:
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send(MsgTo(["Luke"], "Do or do not; there is no try."))
    sent = yoda.recv()
    assert isinstance(sent, MsgSent) and sent.receiver == "Luke"
    received = luke.recv()
    assert received == PrivateMessage("Yoda", "Do or do not; there is no try.", sent.timestamp)
    assert server.log("messagelog.txt") == f"1; {sent.timestamp}; Luke; Do or do not; there is no try.\n"
    server.output.expect(f'Yoda message to Luke "Do or do not; there is no try." at {sent.timestamp}.')


def test_private_message_errors(server: ServerProcess) -> None:
    yoda = login(server, "Yoda")
    yoda.send(MsgTo(["Ghost"], "boo"))
    assert error_text(yoda) == "Error. User Ghost does not exist."
    yoda.send(MsgTo(["Luke"], "boo"))
    assert error_text(yoda) == "Error. Luke is not active."
    yoda.send(MsgTo([], "boo"))
    assert error_text(yoda) == "Error. Usage: /msgto USERNAME MESSAGE"
    assert server.log("messagelog.txt") == ""


def test_message_to_several_receivers(server: ServerProcess) -> None:
    yoda, luke, leia = login(server, "Yoda"), login(server, "Luke"), login(server, "Leia")
    yoda.send(MsgTo(["Luke", "Ghost", "Leia", "Luke"], "meeting"))
    first, problem, second = yoda.recv(), yoda.recv(), yoda.recv()
    assert (first.receiver, second.receiver) == ("Luke", "Leia")
    assert problem == Error("command", "Error. User Ghost does not exist.")
    assert luke.recv().text == leia.recv().text == "meeting"
    lines = server.log("messagelog.txt").splitlines()
    assert [l.split("; ")[0::2] for l in lines] == [["1", "Luke"], ["2", "Leia"]]


def test_activeuser_lists_others_in_login_order(server: ServerProcess) -> None:
    yoda = login(server, "Yoda", 7001)
    yoda.send(ActiveUser())
    assert yoda.recv() == ActiveUsers([])
    others = [login(server, "Luke", 7002), login(server, "Leia", 7003)]  # kept open: still logged in
    yoda.send(ActiveUser())
    users = yoda.recv().users
    assert [(u.username, u.ip, u.udp_port) for u in users] == [("Luke", "127.0.0.1", 7002), ("Leia", "127.0.0.1", 7003)]
    assert all(re.fullmatch(TIMESTAMP, u.since) for u in users)


def test_group_lifecycle(server: ServerProcess) -> None:
    yoda, luke, leia = login(server, "Yoda"), login(server, "Luke"), login(server, "Leia")
    yoda.send(CreateGroup("jedi", ["Luke", "Leia"]))
    assert yoda.recv() == GroupCreated("jedi", ["Yoda", "Luke", "Leia"])
    assert luke.recv() == GroupInvite("jedi", "Yoda") and leia.recv() == GroupInvite("jedi", "Yoda")
    assert (server.data_dir / "jedi_messagelog.txt").exists()
    luke.send(GroupMsg("jedi", "early"))
    assert error_text(luke) == "Please join the group before sending messages."
    luke.send(JoinGroup("jedi"))
    assert luke.recv() == GroupJoined("jedi")
    luke.send(JoinGroup("jedi"))
    assert error_text(luke) == "You have already joined Groupchat jedi"
    yoda.send(JoinGroup("jedi"))
    assert error_text(yoda) == "You have already joined Groupchat jedi"
    luke.send(GroupMsg("jedi", "hello group"))
    assert luke.recv() == GroupSent("jedi")
    message = yoda.recv()
    assert isinstance(message, GroupMessage) and (message.sender, message.text) == ("Luke", "hello group")
    leia.send(ActiveUser())  # Leia has not joined: her next message is this reply, not the group's
    assert isinstance(leia.recv(), ActiveUsers)
    assert server.log("jedi_messagelog.txt") == f"1; {message.timestamp}; Luke; hello group\n"


def test_group_errors(server: ServerProcess) -> None:
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send(CreateGroup("jedi", []))
    assert error_text(yoda) == "Please enter at least one more active users."
    yoda.send(CreateGroup("je_di", ["Luke"]))
    assert error_text(yoda) == "Error. Group name must contain only letters and digits."
    yoda.send(CreateGroup("jedi", ["Luke", "Ghost"]))
    assert error_text(yoda) == "Error. User Ghost does not exist."
    yoda.send(CreateGroup("jedi", ["Luke", "Leia"]))
    assert error_text(yoda) == "Error. Leia is not active."
    assert not (server.data_dir / "jedi_messagelog.txt").exists()  # nothing created on an error
    yoda.send(CreateGroup("jedi", ["Luke"]))
    assert isinstance(yoda.recv(), GroupCreated)
    assert luke.recv() == GroupInvite("jedi", "Yoda")
    yoda.send(CreateGroup("jedi", ["Luke"]))
    assert error_text(yoda) == "Failed to create the group chat jedi: group name exists!"
    leia = login(server, "Leia")
    leia.send(JoinGroup("sith"))
    assert error_text(leia) == "Groupchat sith doesn't exist."
    leia.send(JoinGroup("jedi"))
    assert error_text(leia) == "Error. You were not added to Groupchat jedi."
    leia.send(GroupMsg("jedi", "let me in"))
    assert error_text(leia) == "You are not in this group chat."
    leia.send(GroupMsg("sith", "anyone?"))
    assert error_text(leia) == "The group chat does not exist."


def test_group_message_logged_when_nobody_else_online(server: ServerProcess) -> None:
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send(CreateGroup("jedi", ["Luke"]))
    yoda.recv()
    luke.close()
    wait_for(lambda: userlog_names(server) == ["Yoda"], what="Luke's logout")
    yoda.send(GroupMsg("jedi", "alone"))
    assert yoda.recv() == GroupSent("jedi")
    assert server.log("jedi_messagelog.txt").endswith("; Yoda; alone\n")


def test_logout_renumbers_userlog(server: ServerProcess) -> None:
    clients = {name: login(server, name, 7000 + i) for i, name in enumerate(["Yoda", "Luke", "Leia"])}
    wait_for(lambda: userlog_names(server) == ["Yoda", "Luke", "Leia"], what="three users in userlog")
    clients["Luke"].send(Logout())
    assert clients["Luke"].recv() == Bye("Luke")
    assert clients["Luke"].closed_by_server()
    server.output.expect("Luke logout")
    wait_for(lambda: userlog_names(server) == ["Yoda", "Leia"], what="Luke gone from userlog")
    lines = server.log("userlog.txt").splitlines()
    assert [l.split("; ")[0] for l in lines] == ["1", "2"]
    assert re.fullmatch(rf"2; {TIMESTAMP}; Leia; 127\.0\.0\.1; 7002", lines[1])


def test_disconnect_is_logout(server: ServerProcess) -> None:
    yoda = login(server, "Yoda")
    wait_for(lambda: userlog_names(server) == ["Yoda"], what="Yoda in userlog")
    yoda.sock.close()
    server.output.expect("Yoda logout")
    wait_for(lambda: server.log("userlog.txt") == "", what="empty userlog")
    login(server, "Yoda")  # and may log in again


def test_p2pvideo_setup(server: ServerProcess) -> None:
    yoda, luke = login(server, "Yoda", 7001), login(server, "Luke", 7002)
    yoda.send(P2PVideo("Luke", "test.mp4", 1234))
    ready = yoda.recv()
    assert isinstance(ready, TransferReady) and ready.filename == "test.mp4"
    (target,) = ready.targets
    assert (target.audience, target.ip, target.udp_port) == ("Luke", "127.0.0.1", 7002)
    offer = luke.recv()
    assert offer == TransferOffer("Yoda", "test.mp4", 1234, "127.0.0.1", 7001, target.transfer_id, target.key)
    yoda.send(P2PVideo("Yoda", "test.mp4", 1))
    assert error_text(yoda) == "Error. You cannot send a file to yourself."
    yoda.send(P2PVideo("Ghost", "test.mp4", 1))
    assert error_text(yoda) == "Error. User Ghost does not exist."
    yoda.send(P2PVideo("Leia", "test.mp4", 1))
    assert error_text(yoda) == "Leia is offline"
    luke.close()  # Luke's connection drops mid-transfer: Yoda hears of it at once
    assert yoda.recv() == TransferEnded(target.transfer_id, "Luke")


def test_groupvideo_setup_targets_joined_active_members(server: ServerProcess) -> None:
    yoda, luke, leia = login(server, "Yoda"), login(server, "Luke"), login(server, "Leia")
    yoda.send(CreateGroup("jedi", ["Luke", "Leia"]))
    yoda.recv()
    luke.recv(), leia.recv()
    luke.send(JoinGroup("jedi"))
    luke.recv()
    yoda.send(GroupVideo("jedi", "clip.mp4", 10))
    ready = yoda.recv()
    assert [t.audience for t in ready.targets] == ["Luke"]
    assert luke.recv().transfer_id == ready.targets[0].transfer_id
    leia.send(GroupVideo("jedi", "clip.mp4", 10))
    assert error_text(leia) == "Please join the group before sending messages."


# --- logs across restarts -----------------------------------------------------------------

def test_restart_continues_numbering_and_repairs_torn_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send(MsgTo(["Luke"], "one"), CreateGroup("jedi", ["Luke"]), GroupMsg("jedi", "g-one"))
    for _ in range(3):
        yoda.recv()
    server.kill()
    with open(tmp_path / "messagelog.txt", "a") as log:
        log.write("2; 01 Jun 2023 15:00:01; Lu")  # a crash mid-line
    server = ServerProcess(tmp_path)
    try:
        assert server.log("userlog.txt") == ""  # reset at start
        yoda, luke = login(server, "Yoda"), login(server, "Luke")
        yoda.send(MsgTo(["Luke"], "two"), CreateGroup("jedi", ["Luke"]), GroupMsg("jedi", "g-two"))
        for _ in range(3):
            yoda.recv()
        numbers = [l.split(";")[0] for l in server.log("messagelog.txt").splitlines()]
        assert numbers == ["1", "2"]
        group_lines = server.log("jedi_messagelog.txt").splitlines()
        assert [l.split(";")[0] for l in group_lines] == ["1", "2"]
        assert group_lines[1].endswith("; Yoda; g-two")
    finally:
        server.stop()


# --- start-up errors ----------------------------------------------------------------------

def run_server(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "server.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("attempts", ["0", "6", "2.5", "abc", "-1"])
def test_bad_attempts_number(tmp_path: Path, attempts: str) -> None:
    result = run_server("0", attempts, cwd=tmp_path)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).strip() == (
        f"Invalid number of allowed failed consecutive attempt: {attempts}. "
        "The valid value of argument number is an integer between 1 and 5")


@pytest.mark.parametrize("args", [["abc", "3"], ["70000", "3"], []])
def test_bad_arguments_one_line_no_traceback(tmp_path: Path, args: list[str]) -> None:
    result = run_server(*args, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and len(output.splitlines()) == 1 and "Traceback" not in output


def test_missing_credentials(tmp_path: Path) -> None:
    result = run_server("0", "3", cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert output.startswith("Cannot read credentials.txt") and len(output.splitlines()) == 1


def test_port_in_use(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_text("Yoda pw\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        result = run_server(str(busy.getsockname()[1]), "3", "--host", "127.0.0.1", cwd=tmp_path)
    finally:
        busy.close()
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and output.startswith("Cannot listen on") and "Traceback" not in output


def test_crlf_credentials_and_clean_stop(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_bytes(b"Yoda wise@!manbaby\r\n\r\nLuke light=saber45\r\n")
    server = ServerProcess(tmp_path)
    login(server, "Luke")
    server.stop()
    assert server.process.returncode == 0
    assert "Traceback" not in "\n".join(server.output.settle())
