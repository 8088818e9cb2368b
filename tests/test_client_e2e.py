"""The real client.py against the real server.py: exact lines of SPEC §4–§5 and the logs.

Each client runs in its own directory with stdin and stdout piped. Tests wait for lines,
never for time; the only clock they depend on is the server's (short) block time.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from core.framing import encode as frame
from core.messages import (
    ActiveUser, ActiveUsers, Bye, CheckUser, Login, Logout, MsgSent, MsgTo, PrivateMessage, UserOk, Welcome,
    encode,
)
from tests.client_harness import LOGIN_LINES, PROMPT, TIMESTAMP, ClientProcess, FakeServer
from tests.harness import PASSWORDS, ROOT, ServerProcess, wait_for

Start = Callable[..., ClientProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[ServerProcess], ClientProcess]]:
    """Start a client of ``server`` in a fresh directory; every client is stopped at the end."""
    clients: list[ClientProcess] = []

    def start_client(server: ServerProcess, *flags: str) -> ClientProcess:
        client = ClientProcess(server.port, tmp_path / f"client{len(clients)}", *flags)
        clients.append(client)
        return client

    yield start_client
    for client in clients:
        client.stop()


def logged_in(start: Start, server: ServerProcess, *usernames: str) -> list[ClientProcess]:
    """Clients logged in as ``usernames``, in that order (their processes start together)."""
    clients = [start(server) for _ in usernames]
    return [client.login(username) for client, username in zip(clients, usernames)]


def log_lines(server: ServerProcess, name: str) -> list[str]:
    return server.log(name).splitlines()


def userlog_names(server: ServerProcess) -> list[tuple[str, str]]:
    return [(line.split("; ")[0], line.split("; ")[2]) for line in log_lines(server, "userlog.txt")]


# --- §4 logging in ------------------------------------------------------------------------

def test_login_shows_the_spec_lines_and_reports_the_real_udp_port(server: ServerProcess, start: Start) -> None:
    yoda = start(server).login("Yoda")
    line = server.output.expect(re.compile(r"Yoda login from 127\.0\.0\.1 \(UDP port (\d+)\) at .*"))
    port = int(re.search(r"UDP port (\d+)", line).group(1))
    assert port != 0
    # the port the server was told is the one the client's UDP socket is bound to
    with pytest.raises(OSError):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("0.0.0.0", port))
    (entry,) = log_lines(server, "userlog.txt")
    assert re.fullmatch(rf"1; {TIMESTAMP}; Yoda; 127\.0\.0\.1; {port}", entry)
    yoda.close_stdin()


def test_unknown_username_and_wrong_password_are_asked_again(server: ServerProcess, start: Start) -> None:
    client = start(server)
    client.type("yoda")  # usernames are case-sensitive
    assert client.output.until("Username:") == ["Please login"]
    assert client.output.until("Username:") == ["Invalid Username. Please try again"]
    client.type("Yoda", "wrong")
    assert client.output.until("Password:") == []
    assert client.output.until("Password:") == ["Invalid Password. Please try again"]
    client.type(PASSWORDS["Yoda"])
    assert client.output.until(PROMPT) == ["Welcome to TESSENGER!"]


def test_lockout_counts_failures_across_clients_and_ends_after_the_block(tmp_path: Path, start: Start) -> None:
    (tmp_path / "server").mkdir()
    server = ServerProcess(tmp_path / "server", 3, "--block-seconds", "1.5")
    try:
        first, second, third = start(server), start(server), start(server)
        for client in (first, second, third):
            client.output.until("Username:")
        first.type("Luke", "bad1", "bad2")
        first.output.until("Password:")
        assert first.output.until("Password:") == ["Invalid Password. Please try again"]
        assert first.output.until("Password:") == ["Invalid Password. Please try again"]
        second.type("Luke", "bad3")  # the third failure in a row, from another client
        assert second.output.rest() == [
            "Password:", "Invalid Password. Your account has been blocked. Please try again later"]
        assert second.exit_code() == 1
        third.type("Luke")  # nothing told before a password; then, whoever asks, blocked
        assert third.output.until("Password:") == []
        third.type("any")
        assert third.output.rest() == [
            "Your account is blocked due to multiple login failures. Please try again later"]
        assert third.exit_code() == 1
        first.type(PASSWORDS["Luke"])  # blocked even with the right password
        assert first.output.rest() == [
            "Your account is blocked due to multiple login failures. Please try again later"]
        assert first.exit_code() == 1
        wait_for(lambda: can_log_in(server, "Luke"), what="the block to end")
        start(server).login("Luke")
    finally:
        server.stop()


def can_log_in(server: ServerProcess, username: str) -> bool:
    """Log in and out at once, if the account is not blocked (a try during the block counts nothing)."""
    probe = server.connect()
    try:
        probe.send(Login(username, PASSWORDS[username], 7000))
        if probe.recv() != Welcome(username):
            return False
        probe.send(Logout())
        return probe.recv() == Bye(username)
    finally:
        probe.close()


def test_duplicate_login_is_told_after_the_password_and_asks_the_username_again(
        server: ServerProcess, start: Start) -> None:
    start(server).login("Yoda")
    second = start(server)
    second.type("Yoda")
    assert second.output.until("Username:") == ["Please login"]
    assert second.output.until("Password:") == []  # who is online is not told before a password
    second.type("wrong")
    assert second.output.until("Password:") == ["Invalid Password. Please try again"]
    second.type(PASSWORDS["Yoda"])
    assert second.output.until("Username:") == ["Yoda is already logged in"]
    second.login("Luke")


def test_end_of_input_while_logging_in_says_one_line_and_fails(server: ServerProcess, start: Start) -> None:
    client = start(server)
    client.type("Yoda")
    client.close_stdin()
    assert client.output.rest() == ["Please login", "Username:", "Password:", "Login cancelled."]
    assert client.exit_code() == 1


# --- §5 commands --------------------------------------------------------------------------

def test_msgto(server: ServerProcess, start: Start) -> None:
    yoda, luke = logged_in(start, server, "Yoda", "Luke")
    (sent,) = yoda.command("/msgto Luke May the  Force be with you")
    timestamp = re.fullmatch(rf"message sent at ({TIMESTAMP})\.", sent).group(1)
    luke.output.expect(rf"{timestamp}, Yoda: May the  Force be with you")
    server.output.expect(re.compile(rf'Yoda message to Luke "May the  Force be with you" at {timestamp}\.'))
    assert log_lines(server, "messagelog.txt") == [f"1; {timestamp}; Luke; May the  Force be with you"]


def test_msgto_errors(server: ServerProcess, start: Start) -> None:
    yoda = start(server).login("Yoda")
    assert yoda.command("/msgto") == ["Error. Usage: /msgto USERNAME MESSAGE"]
    assert yoda.command("/msgto Luke") == ["Error. Usage: /msgto USERNAME MESSAGE"]
    assert yoda.command("/msgto Ghost hi") == ["Error. User Ghost does not exist."]
    assert yoda.command("/msgto Luke hi") == ["Error. Luke is not active."]
    assert yoda.command("/msgto Luke " + "x" * 1001) == ["Error. The message is longer than 1000 characters."]
    assert yoda.command("/msgto Luke bad\x1b[2Jtext") == ["Error. The message contains a control character (U+001B)."]
    assert yoda.command("/msgto 3 Luke Leia hi") == ["Error. Usage: /msgto N USER1 .. USERN MESSAGE"]
    assert server.log("messagelog.txt") == ""


def test_msgto_several_receivers(server: ServerProcess, start: Start) -> None:
    yoda, luke, leia = logged_in(start, server, "Yoda", "Luke", "Leia")
    lines = yoda.command("/msgto 4 Luke Ghost Hans Leia hello all")
    assert [re.sub(TIMESTAMP, "T", line) for line in lines] == [
        "message sent at T.", "Error. User Ghost does not exist.", "Error. Hans is not active.",
        "message sent at T."]
    luke.output.expect(rf"{TIMESTAMP}, Yoda: hello all")
    leia.output.expect(rf"{TIMESTAMP}, Yoda: hello all")
    assert [line.split("; ")[2:] for line in log_lines(server, "messagelog.txt")] == [
        ["Luke", "hello all"], ["Leia", "hello all"]]


def test_a_message_arriving_while_a_command_is_in_flight(server: ServerProcess, start: Start) -> None:
    yoda = start(server).login("Yoda")
    # a message to oneself: the push and the reply come back in the same turn
    push, sent = yoda.command("/msgto Yoda note to self")
    assert re.fullmatch(rf"{TIMESTAMP}, Yoda: note to self", push)
    assert re.fullmatch(rf"message sent at {TIMESTAMP}\.", sent)


def test_activeuser(server: ServerProcess, start: Start) -> None:
    yoda = start(server).login("Yoda")
    assert yoda.command("/activeuser") == ["no other active user"]
    assert yoda.command("/activeuser all") == ["Error. Usage: /activeuser"]
    logged_in(start, server, "Luke", "Leia")
    # the server writes userlog.txt just after it sends Welcome
    wait_for(lambda: len(log_lines(server, "userlog.txt")) == 3, what="the userlog")
    ports = {line.split("; ")[2]: line.split("; ")[4] for line in log_lines(server, "userlog.txt")}
    lines = yoda.command("/activeuser")
    assert [re.sub(TIMESTAMP, "T", line) for line in lines] == [
        f"Luke, 127.0.0.1, {ports['Luke']}, active since T.",
        f"Leia, 127.0.0.1, {ports['Leia']}, active since T."]
    server.output.expect("Yoda issued /activeuser")


def test_groups(server: ServerProcess, start: Start) -> None:
    yoda, luke, leia = logged_in(start, server, "Yoda", "Luke", "Leia")
    # /creategroup errors: nothing is created
    assert yoda.command("/creategroup") == ["Error. Usage: /creategroup GROUPNAME USER1 [USER2 ...]"]
    assert yoda.command("/creategroup jedi") == ["Please enter at least one more active users."]
    assert yoda.command("/creategroup jedi Yoda") == ["Please enter at least one more active users."]
    assert yoda.command("/creategroup je_di Luke") == ["Error. Group name must contain only letters and digits."]
    assert yoda.command("/creategroup jedi Luke Ghost") == ["Error. User Ghost does not exist."]
    assert yoda.command("/creategroup jedi Luke Hans") == ["Error. Hans is not active."]
    assert not (server.data_dir / "jedi_messagelog.txt").exists()
    # created: the invitees are told
    assert yoda.command("/creategroup jedi Luke Leia") == [
        "Group chat room has been created, room name: jedi, users in this room: Yoda Luke Leia"]
    assert (server.data_dir / "jedi_messagelog.txt").exists()
    luke.output.expect("Yoda added you to group chat jedi. Use /joingroup jedi to join.")
    leia.output.expect("Yoda added you to group chat jedi. Use /joingroup jedi to join.")
    assert yoda.command("/creategroup jedi Luke") == ["Failed to create the group chat jedi: group name exists!"]
    # /joingroup
    assert luke.command("/joingroup") == ["Error. Usage: /joingroup GROUPNAME"]
    assert luke.command("/joingroup sith") == ["Groupchat sith doesn't exist."]
    assert yoda.command("/joingroup jedi") == ["You have already joined Groupchat jedi"]
    assert luke.command("/joingroup jedi") == ["Joined the group chat: jedi successfully."]
    assert luke.command("/joingroup jedi") == ["You have already joined Groupchat jedi"]
    hans = start(server).login("Hans")
    assert hans.command("/joingroup jedi") == ["Error. You were not added to Groupchat jedi."]
    # /groupmsg
    assert yoda.command("/groupmsg jedi") == ["Error. Usage: /groupmsg GROUPNAME MESSAGE"]
    assert yoda.command("/groupmsg sith hi") == ["The group chat does not exist."]
    assert hans.command("/groupmsg jedi hi") == ["You are not in this group chat."]
    assert leia.command("/groupmsg jedi hi") == ["Please join the group before sending messages."]
    assert yoda.command("/groupmsg jedi Do or do not") == ["Group chat message sent."]
    received = luke.output.expect(rf"{TIMESTAMP}, jedi, Yoda: Do or do not")
    timestamp = received.split(", ")[0]
    assert [re.sub(TIMESTAMP, "T", line) for line in log_lines(server, "jedi_messagelog.txt")] == [
        "1; T; Yoda; Do or do not"]
    assert log_lines(server, "jedi_messagelog.txt")[0].split("; ")[1] == timestamp
    # Leia, added but not joined, got nothing: her next command's output holds no group line
    assert leia.command("/activeuser")[0].startswith("Yoda, ")


def test_help_and_invalid_commands(server: ServerProcess, start: Start) -> None:
    yoda = start(server).login("Yoda")
    lines = yoda.command("/help")
    assert len(lines) == 12 and lines[0].startswith("/msgto USERNAME MESSAGE ")
    assert [line.split("  ")[0] for line in yoda.command("/help groupmsg")] == ["/groupmsg GROUPNAME MESSAGE"]
    assert yoda.command("/whoami") == ["Error. Invalid command!"]
    assert yoda.command("hello there") == ["Error. Invalid command!"]
    assert yoda.command("/logout now") == ["Error. Usage: /logout"]


def test_p2pvideo_checks_and_set_up(server: ServerProcess, start: Start) -> None:
    yoda, luke = logged_in(start, server, "Yoda", "Luke")
    (yoda.workdir / "test.mp4").write_bytes(b"\0" * 1000)
    assert yoda.command("/p2pvideo Luke") == ["Error. Usage: /p2pvideo USERNAME FILENAME"]
    assert yoda.command("/p2pvideo Luke nothing.mp4") == ["Error. File nothing.mp4 does not exist."]
    (yoda.workdir / "folder").mkdir()
    assert yoda.command("/p2pvideo Luke folder") == ["Error. Cannot read folder: not a regular file."]
    assert yoda.command("/p2pvideo Ghost test.mp4") == ["Error. User Ghost does not exist."]
    assert yoda.command("/p2pvideo Hans test.mp4") == ["Hans is offline"]
    assert yoda.command("/p2pvideo Yoda test.mp4") == ["Error. You cannot send a file to yourself."]
    assert yoda.command("/p2pvideo Luke test.mp4") == ["Sending test.mp4 (1000 bytes) to Luke."]
    luke.output.expect(r"Receiving test\.mp4 \(1000 bytes\) from Yoda\.")
    luke.output.expect(r"Received test\.mp4 from Yoda \(saved as Yoda_test\.mp4\)")
    yoda.output.expect("test.mp4 has been uploaded")
    assert (luke.workdir / "Yoda_test.mp4").read_bytes() == b"\0" * 1000


def test_groupvideo_checks(server: ServerProcess, start: Start) -> None:
    yoda, luke = logged_in(start, server, "Yoda", "Luke")
    for client in (yoda, luke):
        (client.workdir / "test.mp4").write_bytes(b"video")
    assert yoda.command("/groupvideo jedi") == ["Error. Usage: /groupvideo GROUPNAME FILENAME"]
    assert yoda.command("/groupvideo jedi test.mp4") == ["The group chat does not exist."]
    yoda.command("/creategroup jedi Luke")
    luke.output.expect("Yoda added you to group chat jedi. Use /joingroup jedi to join.")
    assert yoda.command("/groupvideo jedi nothing.mp4") == ["Error. File nothing.mp4 does not exist."]
    assert luke.command("/groupvideo jedi test.mp4") == ["Please join the group before sending messages."]
    assert yoda.command("/groupvideo jedi test.mp4") == ["No other joined member of jedi is active: test.mp4 was not sent."]


# --- leaving ------------------------------------------------------------------------------

def test_logout_renumbers_the_userlog(server: ServerProcess, start: Start) -> None:
    yoda, luke, leia = logged_in(start, server, "Yoda", "Luke", "Leia")
    wait_for(lambda: userlog_names(server) == [("1", "Yoda"), ("2", "Luke"), ("3", "Leia")], what="the userlog")
    luke.type("/logout")
    assert luke.output.rest() == ["Bye, Luke!"]
    assert luke.exit_code() == 0
    server.output.expect("Luke logout")
    wait_for(lambda: userlog_names(server) == [("1", "Yoda"), ("2", "Leia")], what="the userlog")
    assert yoda.command("/msgto Luke back?") == ["Error. Luke is not active."]


@pytest.mark.parametrize("how", ["ctrl-d", "ctrl-c", "sigterm"])
def test_end_of_input_and_signals_log_out(server: ServerProcess, start: Start, how: str) -> None:
    yoda = start(server).login("Yoda")
    if how == "ctrl-d":
        yoda.close_stdin()
    else:
        yoda.process.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
    assert yoda.output.rest() == ["Bye, Yoda!"]
    assert yoda.exit_code() == 0
    server.output.expect("Yoda logout")
    wait_for(lambda: server.log("userlog.txt") == "", what="the userlog to empty")


def test_lines_before_end_of_input_all_run(server: ServerProcess, start: Start) -> None:
    client = start(server)
    client.type("Yoda", PASSWORDS["Yoda"], "/activeuser", "/msgto Yoda hi")
    client.close_stdin()
    lines = [re.sub(TIMESTAMP, "T", line) for line in client.output.rest()]
    assert lines == [*LOGIN_LINES, PROMPT, "no other active user", PROMPT, "T, Yoda: hi",
                     "message sent at T.", PROMPT, "Bye, Yoda!"]
    assert client.exit_code() == 0


def test_a_killed_client_is_logged_out(server: ServerProcess, start: Start) -> None:
    _, luke = logged_in(start, server, "Yoda", "Luke")
    luke.process.kill()
    server.output.expect("Luke logout")
    wait_for(lambda: userlog_names(server) == [("1", "Yoda")], what="the userlog")


def test_the_server_going_away_ends_the_client(tmp_path: Path, start: Start) -> None:
    (tmp_path / "server").mkdir()
    server = ServerProcess(tmp_path / "server")
    yoda = start(server).login("Yoda")
    server.kill()
    assert yoda.output.rest() == ["Connection to the server was lost."]
    assert yoda.exit_code() == 1


# --- against a scripted server ------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def fake_login(fake: FakeServer, client: ClientProcess) -> None:
    fake.accept()
    client.type("Yoda", "pw")
    assert fake.recv() == CheckUser("Yoda")
    fake.send(UserOk())
    assert isinstance(fake.recv(), Login)
    fake.send(Welcome("Yoda"))
    assert client.output.until(PROMPT) == LOGIN_LINES


def test_next_command_waits_for_the_reply_while_pushes_show(fake: FakeServer, tmp_path: Path) -> None:
    client = ClientProcess(fake.port, tmp_path / "client")
    try:
        fake_login(fake, client)
        client.type("/msgto Luke first", "/activeuser")
        assert fake.recv() == MsgTo(["Luke"], "first")
        fake.send(PrivateMessage("Leia", "meanwhile", "01 Jun 2023 15:00:01"))
        assert client.output.until("01 Jun 2023 15:00:01, Leia: meanwhile") == []
        assert fake.idle()  # /activeuser is held back until /msgto has its reply
        fake.send(MsgSent("Luke", "01 Jun 2023 15:00:02"))
        assert client.output.until(PROMPT) == ["message sent at 01 Jun 2023 15:00:02."]
        assert fake.recv() == ActiveUser()
        fake.send(ActiveUsers([]))
        assert client.output.until(PROMPT) == ["no other active user"]
    finally:
        client.stop()


def test_text_from_the_network_is_never_printed_raw(fake: FakeServer, tmp_path: Path) -> None:
    client = ClientProcess(fake.port, tmp_path / "client")
    try:
        fake_login(fake, client)
        client.type("/msgto Luke hi")
        fake.recv()
        fake.send(MsgSent("Luke", "\x1b[2J\x1b]0;pwned\x07\nnow"))  # timestamps are plain strings
        assert client.output.until(PROMPT) == ["message sent at \\x1b[2J\\x1b]0;pwned\\x07\\nnow."]
    finally:
        client.stop()


@pytest.mark.parametrize("garbage, reason", [
    (b"\xff\xff\xff\xff", "frame of 4294967295 bytes exceeds the limit of 16777216"),
    (b"\0\0\0\x02{}", "unknown message type None"),
])
def test_garbage_from_the_server_ends_the_client_with_one_line(
        fake: FakeServer, tmp_path: Path, garbage: bytes, reason: str) -> None:
    client = ClientProcess(fake.port, tmp_path / "client")
    try:
        fake_login(fake, client)
        fake.send_raw(garbage)
        assert client.output.rest() == [f"Error. The server sent an invalid message ({reason})."]
        assert client.exit_code() == 1
    finally:
        client.stop()


def test_a_message_sent_just_before_a_broken_frame_is_still_shown(fake: FakeServer, tmp_path: Path) -> None:
    client = ClientProcess(fake.port, tmp_path / "client")
    try:
        fake_login(fake, client)
        message = frame(encode(PrivateMessage("Leia", "last words", "01 Jun 2023 15:00:01")))
        fake.send_raw(message + b"\xff\xff\xff\xff")  # one read holds both
        assert client.output.rest() == [
            "01 Jun 2023 15:00:01, Leia: last words",
            "Error. The server sent an invalid message (frame of 4294967295 bytes exceeds the limit of 16777216).",
        ]
        assert client.exit_code() == 1
    finally:
        client.stop()


# --- start-up errors ----------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


def busy_udp_port(holder: socket.socket) -> str:
    holder.bind(("0.0.0.0", 0))
    return str(holder.getsockname()[1])


@pytest.mark.parametrize("arguments, pattern", [
    ([], r"Error: the following arguments are required: .*\. Usage: python3 client\.py .*"),
    (["127.0.0.1", "5000"], r"Error: the following arguments are required: CLIENT_UDP_PORT\. Usage: .*"),
    (["127.0.0.1", "abc", "0"], r"Invalid server port: abc\. The port must be an integer between 1 and 65535"),
    (["127.0.0.1", "0", "0"], r"Invalid server port: 0\. .*"),
    (["127.0.0.1", "5000", "70000"], r"Invalid UDP port: 70000\. The port must be an integer between 0 and 65535"),
    (["127.0.0.1", "5000", "-1"], r"Invalid UDP port: -1\. .*"),
    (["127.0.0.1", "5000", "0", "--receive-dir", "/nonexistent/dir"],
     r"Cannot use /nonexistent/dir to receive files: it is not a directory"),
    (["127.0.0.1", "5000", "0", "--bogus"], r"Error: unrecognized arguments: --bogus\. Usage: .*"),
    (["127.0.0.1", "CLOSED", "0"], r"Cannot connect to the server at 127\.0\.0\.1:\d+: Connection refused"),
    (["no.such.host.invalid", "5000", "0"], r"Cannot find the server no\.such\.host\.invalid: .*"),
    (["127.0.0.1", "5000", "BUSY"], r"Cannot use UDP port \d+: Address already in use"),
])
def test_bad_arguments_give_one_line_and_fail(tmp_path: Path, arguments: list[str], pattern: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        arguments = [closed_port() if a == "CLOSED" else busy_udp_port(holder) if a == "BUSY" else a
                     for a in arguments]
        result = subprocess.run([sys.executable, str(ROOT / "client.py"), *map(str, arguments)],
                                cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(pattern, line), line


def test_help_lists_the_options(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "client.py"), "--help"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert all(flag in result.stdout for flag in ("--receive-dir", "--datagram-size", "--max-receive-size"))
