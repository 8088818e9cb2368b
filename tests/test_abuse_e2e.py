"""The real server.py against one user or one address trying to hurt the others (issue 10,
items 4, 7 and 8): failed logins throttled per address, group quotas, credentials.txt."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

from core.messages import ActiveUser, ActiveUsers, CreateGroup, Error, GroupCreated, Login, Welcome
from tests.harness import CREDENTIALS, PASSWORDS, ROOT, TIMEOUT, ServerProcess, WireClient
from tests.test_limits import rss_kib
from tests.test_server import login

ATTACKER = "127.0.0.66"  # another loopback address: the honest clients come from 127.0.0.1


def test_failed_logins_from_one_address_are_slowed_and_other_addresses_are_not(tmp_path: Path) -> None:
    users = [f"user{i}" for i in range(15)]
    (tmp_path / "credentials.txt").write_text(
        CREDENTIALS.read_text() + "".join(f"{u} secret\n" for u in users))
    server = ServerProcess(tmp_path, 5, "--failed-login-burst", "3", "--failed-login-rate", "4")
    try:
        attackers = [WireClient(("127.0.0.1", server.port), ATTACKER) for _ in users]
        start = time.monotonic()
        for attacker, user in zip(attackers, users):  # one guess per account: no account is blocked
            attacker.send(Login(user, "guess", 7000))
        honest = server.connect()
        honest.send(Login("Yoda", PASSWORDS["Yoda"], 7000))
        assert honest.recv() == Welcome("Yoda")
        # the honest login was not kept waiting behind the attacker's guesses
        readable, _, _ = select.select([a.sock for a in attackers], [], [], 0)
        assert len(readable) < len(attackers)
        for attacker in attackers:
            reply = attacker.recv()
            assert isinstance(reply, Error) and reply.code == "invalid_password", reply
        # 3 at once, then 4 a second: the last of 15 guesses no sooner than 3 s after the first
        assert time.monotonic() - start >= (len(users) - 3) / 4 - 0.05
    finally:
        server.stop()


def test_requests_sent_behind_a_held_login_wait_for_it_and_keep_their_order(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, 3, "--failed-login-burst", "1", "--failed-login-rate", "2")
    try:
        client = WireClient(("127.0.0.1", server.port), ATTACKER)
        start = time.monotonic()
        client.send(Login("Yoda", "typo", 7000), Login("Yoda", PASSWORDS["Yoda"], 7000), ActiveUser())
        assert client.recv() == Error("invalid_password", "Invalid Password. Please try again")
        assert client.recv() == Welcome("Yoda")  # put off half a second, then handled...
        assert time.monotonic() - start >= 0.5 - 0.05
        assert client.recv() == ActiveUsers([])  # ...and what came after it only after it
    finally:
        server.stop()


def test_twenty_thousand_creategroups_from_one_user_are_refused_past_the_quota(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, 3, "--flood-rate", "0")  # 20,000 at once: flood control would slow them
    try:
        yoda, luke = login(server, "Yoda"), login(server, "Luke")
        refusal = "Failed to create the group chat g{}: you have created 100 groups, the most one user may."
        created, sizes = 0, []
        for chunk in range(20):  # 1,000 at a time, read as they come, like any client
            first = chunk * 1000
            yoda.send(*[CreateGroup(f"g{i}", ["Luke"]) for i in range(first, first + 1000)])
            for i in range(first, first + 1000):
                reply = yoda.recv()
                if isinstance(reply, GroupCreated):
                    created += 1
                else:
                    assert reply == Error("command", refusal.format(i))
            sizes.append(rss_kib(server.process.pid) * 1024)
        assert created == 100
        assert len(list(tmp_path.glob("*_messagelog.txt"))) == 100
        # the 19,000 refusals after the first thousand requests keep nothing
        assert sizes[-1] - sizes[0] < 4 * 1024 * 1024, sizes
        login(server, "Hans")  # and the server still serves
    finally:
        server.stop()


def test_a_byte_order_mark_does_not_disable_the_first_account(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_bytes(b"\xef\xbb\xbf" + CREDENTIALS.read_bytes())
    server = ServerProcess(tmp_path)
    try:
        first = CREDENTIALS.read_text().split(" ")[0]
        login(server, first)
    finally:
        server.stop()


def test_a_repeated_username_stops_the_server_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_text("Yoda first\nLuke x\nYoda second\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "0", "3", "--host", "127.0.0.1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Cannot read {tmp_path / 'credentials.txt'}: line 3 repeats the username Yoda of line 1"]


def test_accounts_no_one_can_type_are_warned_about_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_text("Yoda ok\nbell\x07 pw\nzero\u200bwidth pw\n", encoding="utf-8")
    server = ServerProcess(tmp_path)
    try:
        path = tmp_path / "credentials.txt"
        tail = "cannot be typed (control or invisible characters, or too long); that account can never log in"
        warnings = [line for line in server.output.lines if line.startswith("Warning")]
        assert warnings == [f"Warning: in {path}, the username 'bell\\x07' {tail}",
                            f"Warning: in {path}, the username 'zero\\u200bwidth' {tail}"]
        yoda = server.connect()  # the others load and serve
        yoda.send(Login("Yoda", "ok", 7000))
        assert yoda.recv() == Welcome("Yoda")
    finally:
        server.stop()
