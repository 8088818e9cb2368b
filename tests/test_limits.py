"""The limits of SPEC §7, each through its flag, against the real server.

Frame size (checked at the header, smaller before login), login timeout, unsent output of a
client that stopped reading, the connection limit (and the open-file limit behind it),
bounded work per client per turn, open log files, and presence under connection churn.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from core.framing import encode as frame
from core.messages import (
    ActiveUser, ActiveUsers, CheckUser, CreateGroup, Error, GroupCreated, Login, MsgSent, MsgTo,
    UserOk, Welcome, encode,
)
from core.rules import Chat
from server import Server
from shell.connections import Limits
from shell.logs import MAX_OPEN_LOGS, Logs
from shell.startup import RESERVED_FDS
from tests.harness import PASSWORDS, ROOT, TIMEOUT, LineReader, ServerProcess, WireClient, wait_for
from tests.test_server import login, userlog_names

FULL = Error("protocol", "Error. The server is full. Please try again later.")
TIMED_OUT = Error("protocol", "Error. Login timed out.")


def header(length: int) -> bytes:
    return struct.pack("!I", length)


def padded(payload: bytes, size: int) -> bytes:
    """``payload`` (a JSON object) padded with white space to exactly ``size`` bytes."""
    return payload[:-1] + b" " * (size - len(payload)) + b"}"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def small(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with small limits, so that tests reach them quickly."""
    server = ServerProcess(tmp_path, 3, "--max-frame", "2048", "--login-timeout", "0.5",
                           "--max-output", "65536", "--max-connections", "5")
    yield server
    server.stop()


@pytest.mark.parametrize("flag, value", [
    ("--max-frame", "100"), ("--max-frame", "big"), ("--login-timeout", "0"), ("--login-timeout", "nan"),
    ("--max-output", "-1"), ("--max-connections", "0"), ("--block-seconds", "-1"), ("--block-seconds", "inf"),
])
def test_a_bad_limit_is_one_line_and_no_start(tmp_path: Path, flag: str, value: str) -> None:
    (tmp_path / "credentials.txt").write_text("Yoda pw\n")
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "0", "3", "--host", "127.0.0.1",
                             "--data-dir", str(tmp_path), flag, value], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"Error: argument {flag}: ")


# --- frames -------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [4097, 65537, 2**32 - 1])
def test_over_long_frame_before_login_is_rejected_at_its_header(server: ServerProcess, length: int) -> None:
    client = server.connect()
    client.send_raw(header(length))  # the body never comes: the header alone is refused
    assert client.recv() == Error("protocol", f"Error. Bad frame: frame of {length} bytes exceeds the limit of 4096.")
    assert client.closed_by_server()


def test_frame_limits_before_and_after_login(server: ServerProcess) -> None:
    client = server.connect()
    client.send_raw(frame(padded(b'{"type":"check_user","username":"Yoda"}', 4096)))  # the largest allowed
    assert client.recv() == UserOk()
    client.send(Login("Yoda", PASSWORDS["Yoda"], 7000))
    assert client.recv() == Welcome("Yoda")
    client.send_raw(frame(padded(b'{"type":"activeuser"}', 65536)))  # logged in: up to 64 KiB
    assert client.recv() == ActiveUsers([])
    client.send_raw(header(65537))
    assert client.recv() == Error("protocol", "Error. Bad frame: frame of 65537 bytes exceeds the limit of 65536.")
    assert client.closed_by_server()
    server.output.expect("Yoda logout")


def test_larger_frames_from_the_first_frame_after_login_even_in_the_same_read(server: ServerProcess) -> None:
    client = server.connect()
    client.send_raw(frame(encode(Login("Yoda", PASSWORDS["Yoda"], 7000))) + frame(padded(b'{"type":"activeuser"}', 10_000)))
    assert client.recv() == Welcome("Yoda")
    assert client.recv() == ActiveUsers([])


def test_max_frame_flag(small: ServerProcess) -> None:
    client = small.connect()
    client.send_raw(header(2049))  # --max-frame 2048 lowers the login limit as well
    assert client.recv() == Error("protocol", "Error. Bad frame: frame of 2049 bytes exceeds the limit of 2048.")
    yoda = login(small, "Yoda")
    yoda.send_raw(frame(padded(b'{"type":"activeuser"}', 2048)))
    assert yoda.recv() == ActiveUsers([])
    yoda.send_raw(header(2049))
    assert yoda.recv().code == "protocol"
    assert yoda.closed_by_server()


# --- login timeout ------------------------------------------------------------------------

def test_login_timeout_closes_silent_and_half_sent_connections_only(small: ServerProcess) -> None:
    yoda = login(small, "Yoda")  # connected first: its deadline passes first, but it logged in
    start = time.monotonic()
    silent, half = small.connect(), small.connect()
    half.send_raw(frame(b'{"type":"check_user","username":"Luke"}')[:20])  # half a frame, then silence
    assert silent.recv() == TIMED_OUT and half.recv() == TIMED_OUT
    assert time.monotonic() - start >= 0.45
    assert silent.closed_by_server() and half.closed_by_server()
    yoda.send(ActiveUser())
    assert yoda.recv() == ActiveUsers([])


# --- a client that stops reading ------------------------------------------------------------

def test_client_that_stops_reading_is_dropped_and_logged_out(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, 3, "--max-output", "65536", "--stall-timeout", "0.5", "--flood-rate", "0")
    try:
        yoda, luke, hans, leia = (login(server, name) for name in ("Yoda", "Luke", "Hans", "Leia"))
        # from now on Leia never reads
        wait_for(lambda: userlog_names(server) == ["Yoda", "Luke", "Hans", "Leia"], what="four users in userlog")
        before = rss_kib(server.process.pid)
        replies = []
        for _ in range(40):  # 8 MB for Leia: far more than all the kernel's buffers between us
            yoda.send(*[MsgTo(["Leia"], "x" * 1000)] * 200)
            replies += [yoda.recv() for _ in range(200)]
        assert replies[-1] == Error("command", "Error. Leia is not active.")
        line = server.output.expect(re.compile(r"Leia stopped reading \(\d+ bytes unsent\); disconnecting it"))
        assert int(re.search(r"\d+", line).group()) > 65536
        server.output.expect("Leia logout")
        assert userlog_names(server) == ["Yoda", "Luke", "Hans"]
        assert rss_kib(server.process.pid) - before < 4096  # KiB: nowhere near the 8 MB sent
        luke.send(MsgTo(["Hans"], "still here?"))  # the others are unaffected
        assert isinstance(luke.recv(), MsgSent)
        assert hans.recv().text == "still here?"
        assert leia.closed_by_server()
    finally:
        server.stop()


# --- connections --------------------------------------------------------------------------

def test_connection_over_the_limit_gets_an_error_and_is_closed(small: ServerProcess) -> None:
    clients = [login(small, "Yoda")] + [small.connect() for _ in range(4)]
    for client in clients[1:]:
        client.send(CheckUser("Luke"))  # each answered: all five are in
        assert client.recv() == UserOk()
    sixth = small.connect()
    assert sixth.recv() == FULL
    assert sixth.closed_by_server()
    clients[0].send(ActiveUser())  # the five are unaffected
    assert clients[0].recv() == ActiveUsers([])
    clients[1].close()

    def admitted() -> bool:
        probe = small.connect()
        probe.send(CheckUser("Luke"))
        return probe.recv() == UserOk()

    wait_for(admitted, what="a free place after one connection closed")


def test_connection_limit_follows_the_open_file_limit(tmp_path: Path) -> None:
    """A hard open-file limit too low for --max-connections lowers the connection limit."""
    (tmp_path / "credentials.txt").write_text("Yoda pw\n")
    launcher = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({RESERVED_FDS + 3}, {RESERVED_FDS + 3}))\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, str(ROOT / "server.py"), "0", "3", "--host", "127.0.0.1",
         "--data-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        output = LineReader(process.stdout)
        output.expect("Serving at most 3 connections: the open-file limit allows no more")
        listening = output.expect(re.compile(r"TESSENGER server listening on .*"))
        port = int(re.search(r":(\d+) ", listening).group(1))
        clients = [WireClient(("127.0.0.1", port)) for _ in range(3)]
        for client in clients:
            client.send(CheckUser("Yoda"))
            assert client.recv() == UserOk()
        fourth = WireClient(("127.0.0.1", port))
        assert fourth.recv() == FULL
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT)


class FailingListener(socket.socket):
    """A listening socket whose accept() fails as it does when descriptors run out."""

    def accept(self):  # type: ignore[override]
        raise OSError(24, "Too many open files")


def test_accept_failure_pauses_accepting_instead_of_spinning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.ACCEPT_PAUSE", 0.05)
    listener = FailingListener()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    console = io.StringIO()
    server = Server(listener, Chat({}, 3), Logs(tmp_path, False), Limits(), console)
    client = socket.create_connection(listener.getsockname())  # the listener is readable from now on
    try:
        server.turn(TIMEOUT)
        assert console.getvalue() == "Cannot accept connections for now: Too many open files\n"
        assert server.accept_resume is not None
        assert listener not in [key.fileobj for key in server.selector.get_map().values()]
        assert 0 < server._timeout() <= 0.05
        server.turn(server._timeout())  # the pause over, it listens again
        assert server.accept_resume is None
        assert server.selector.get_key(listener).data is None
    finally:
        client.close()
        server.shutdown()


def test_group_logs_do_not_hold_a_descriptor_each(tmp_path: Path) -> None:
    groups = 2 * MAX_OPEN_LOGS
    server = ServerProcess(tmp_path, 3, "--max-groups-per-user", str(groups))
    try:
        yoda, luke = login(server, "Yoda"), login(server, "Luke")
        baseline = open_fds(server.process.pid)
        yoda.send(*[CreateGroup(f"g{i}", ["Luke"]) for i in range(groups)])
        for i in range(groups):
            assert yoda.recv() == GroupCreated(f"g{i}", ["Yoda", "Luke"])
        assert all((server.data_dir / f"g{i}_messagelog.txt").exists() for i in range(groups))
        assert open_fds(server.process.pid) <= baseline + MAX_OPEN_LOGS
    finally:
        server.stop()


# --- fairness -----------------------------------------------------------------------------

def test_flooding_client_does_not_starve_the_others(tmp_path: Path) -> None:
    """While one client floods small valid requests, another's round trip stays short (bounded
    work per turn, with flood control off: it would slow the flood down before the loop sees it)."""
    server = ServerProcess(tmp_path, 3, "--flood-rate", "0")
    flooder, yoda, luke = login(server, "Hans"), login(server, "Yoda"), login(server, "Luke")
    stop = threading.Event()
    received = 0  # bytes of the flood's replies; counted raw, to leave the test's CPU to the pings

    def flood() -> None:
        burst = frame(b'{"type":"msgto","receivers":["Hans"],"text":"flood"}') * 2000
        try:
            while not stop.is_set():
                flooder.send_raw(burst)
        except OSError:
            pass  # the test shut the connection down

    def drain() -> None:  # reads the flood's replies, so the flooder is never dropped as a slow reader
        nonlocal received
        try:
            while data := flooder.sock.recv(1 << 20):
                received += len(data)
        except OSError:
            pass  # the test shut the connection down

    threads = [threading.Thread(target=flood, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: received > 1_000_000, what="the flood to be under way")
        flooded_before = received
        round_trips = []
        for i in range(50):
            start = time.monotonic()
            yoda.send(MsgTo(["Luke"], f"ping {i}"))
            assert isinstance(yoda.recv(), MsgSent)
            assert luke.recv().text == f"ping {i}"
            round_trips.append(time.monotonic() - start)
        flooded_during = received - flooded_before
    finally:
        stop.set()
        flooder.sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(TIMEOUT)
        server.stop()
    assert flooded_during > 0  # the pings really ran while the flood did
    round_trips.sort()
    # measured on 2 cores: median about 10 ms; handling a whole 64 KiB read of the flood per
    # turn (as the server once did) gives about 80 ms. The bounds leave room for a busy machine.
    assert round_trips[len(round_trips) // 2] < 0.05 and round_trips[-1] < 1.0, round_trips


# --- churn --------------------------------------------------------------------------------

def test_churn_of_logins_and_dropped_connections_leaves_presence_exact(tmp_path: Path) -> None:
    """1,000 clients log in and drop their connections without logging out, three times over."""
    users = [f"u{i:04d}" for i in range(1000)]
    (tmp_path / "credentials.txt").write_text("".join(f"{u} pw-{u}\n" for u in users) + "Yoda pw\n")
    server = ServerProcess(tmp_path, 3, "--per-address", "0", "--per-address-waiting", "0", "--per-address-rate", "0")
    rounds = 3

    def count(suffix: str) -> int:
        return sum(line.endswith(suffix) for line in server.output.settle(0.01))

    try:
        for round_ in range(1, rounds + 1):
            clients = []
            for user in users:
                client = server.connect()
                client.send(Login(user, f"pw-{user}", 7000))
                clients.append(client)
            for client, user in zip(clients, users):
                assert client.recv() == Welcome(user)
            wait_for(lambda: len(userlog_names(server)) == len(users), what=f"round {round_} in userlog")
            for client in clients:
                client.close()
            wait_for(lambda: count(" logout") == round_ * len(users), what=f"round {round_} logged out")
        wait_for(lambda: server.log("userlog.txt") == "", what="an empty userlog.txt at rest")  # rewrites are coalesced
        yoda = server.connect()
        yoda.send(Login("Yoda", "pw", 7000), ActiveUser())
        assert yoda.recv() == Welcome("Yoda")
        assert yoda.recv() == ActiveUsers([])  # presence is empty, not just the file
        lines = server.output.settle(0.01)
        logins = Counter(line.split()[0] for line in lines if " login from " in line)
        logouts = Counter(line.split()[0] for line in lines if line.endswith(" logout"))
        expected = Counter(dict.fromkeys(users, rounds))
        assert logouts == expected  # one logout per login, for every user
        assert logins == expected + Counter(["Yoda"])
    finally:
        server.stop()
