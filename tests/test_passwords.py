"""Passwords: plain or salted scrypt entries in credentials.txt, constant-time comparison,
``server.py --hash-password``, and no password ever printed."""

from __future__ import annotations

import base64
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from core import passwords
from core.messages import Error, Login, Welcome
from core.passwords import ScryptHash, hash_entry, malformed_hash, verify
from tests.harness import ROOT, TIMEOUT, ServerProcess

CHEAP = 16  # scrypt N for tests: the format, not the cost, is under test here

printable_passwords = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
                              min_size=1, max_size=40)


@settings(max_examples=50, deadline=None)
@given(printable_passwords, printable_passwords)
def test_a_hash_entry_matches_its_password_only(password: str, other: str) -> None:
    entry = hash_entry(password, n=CHEAP)
    assert verify(password, entry)
    assert verify(other, entry) == (other == password)
    assert not verify(entry, entry)  # knowing the file's entry is not knowing the password
    assert hash_entry(password, n=CHEAP) != entry  # a fresh salt each time


def test_entry_format() -> None:
    entry = hash_entry("wise@!manbaby")
    prefix, n, r, p, salt, digest = entry.split("$")
    assert (prefix, n, r, p) == ("scrypt", str(passwords.DEFAULT_N), "8", "1")
    assert len(base64.b64decode(salt)) == passwords.SALT_BYTES and len(base64.b64decode(digest)) == passwords.HASH_BYTES
    assert " " not in entry and ScryptHash.parse(entry).entry() == entry
    assert 128 * passwords.DEFAULT_R * passwords.MAX_N <= passwords.MAX_MEMORY  # the costliest entry parses


def test_plain_entries_still_work() -> None:
    assert verify("light=saber45", "light=saber45")
    assert not verify("light=saber4", "light=saber45")
    assert not verify("", "light=saber45")


@pytest.mark.parametrize("entry", [
    "scrypt$",
    "scrypt$oops",
    "scrypt$16$8$1$c2FsdA==",  # no hash
    "scrypt$15$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # N not a power of two
    "scrypt$16$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA==",  # salt without its padding
    "scrypt$16$8$1$!!!!$aGFzaGhhc2hoYXNoaGFzaA==",  # not base64
    "scrypt$16$8$1$c2FsdHNhbHQ=$aGFzaA==",  # a hash too short to mean anything
    "scrypt$1048576$999$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # would need 128 GB
    "scrypt$16$8$99$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # p out of range
])
def test_a_malformed_entry_is_a_plain_password(entry: str) -> None:
    """The documented rule: only a well-formed entry is a hash; anything else is plain."""
    assert ScryptHash.parse(entry) is None and malformed_hash(entry)
    assert verify(entry, entry)
    assert not verify("oops", entry)


def test_both_ways_compare_in_constant_time() -> None:
    entry = hash_entry("secret", n=CHEAP)
    with mock.patch("core.passwords.hmac.compare_digest", wraps=passwords.hmac.compare_digest) as compare:
        assert verify("secret", entry) and verify("plain", "plain")
    assert compare.call_count == 2


# --- server.py --hash-password ------------------------------------------------------------------

def hash_password(stdin: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "server.py"), "--hash-password", *flags],
                          input=stdin, capture_output=True, text=True, timeout=30)


def test_hash_password_prints_an_entry_for_a_line_of_stdin() -> None:
    result = hash_password("wise@!manbaby\r\n")
    assert result.returncode == 0 and result.stderr == ""
    (entry,) = result.stdout.splitlines()
    assert ScryptHash.parse(entry) is not None and verify("wise@!manbaby", entry)
    assert "wise@!manbaby" not in result.stdout
    costly = hash_password("pw\n", "--hash-cost", "1024").stdout.strip()
    assert ScryptHash.parse(costly).n == 1024 and verify("pw", costly)


def test_hash_password_on_a_terminal_asks_twice_without_echo() -> None:
    pid, terminal = pty.fork()
    if pid == 0:  # the child: server.py with the pty as its controlling terminal
        os.execv(sys.executable, [sys.executable, str(ROOT / "server.py"), "--hash-password"])
    seen = b""

    def read_until(marker: bytes | None) -> None:
        nonlocal seen
        while marker is None or marker not in seen:
            assert select.select([terminal], [], [], TIMEOUT)[0], f"no {marker!r} in {seen!r}"
            try:
                data = os.read(terminal, 4096)
            except OSError:  # EIO: the child is gone
                data = b""
            if not data:
                assert marker is None, f"no {marker!r} in {seen!r}"
                return
            seen += data

    try:
        read_until(b"Password: ")
        os.write(terminal, b"s3cret!\n")
        read_until(b"Repeat the password: ")
        os.write(terminal, b"s3cret!\n")
        read_until(None)
    finally:
        os.close(terminal)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = seen.decode()
    assert "s3cret!" not in text  # never echoed
    assert verify("s3cret!", text.split()[-1])


@pytest.mark.parametrize("stdin", ["", "\n", "has space\n", "tab\there\n", "x" * 257 + "\n"])
def test_hash_password_refuses_what_nobody_could_log_in_with(stdin: str) -> None:
    result = hash_password(stdin)
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("cost", ["1000", "1", "abc", str(2 * passwords.MAX_N)])
def test_hash_cost_must_be_a_power_of_two(cost: str) -> None:
    result = hash_password("pw\n", "--hash-cost", cost)
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1


# --- the server with hashed accounts ----------------------------------------------------------

def test_server_logs_in_hashed_plain_and_malformed_entries_and_prints_no_password(tmp_path: Path) -> None:
    secrets = {"Yoda": "wise@!manbaby", "Luke": "light=saber45", "Leia": "scrypt$not-a-hash"}
    yoda_entry = hash_password(secrets["Yoda"] + "\n").stdout.strip()
    (tmp_path / "credentials.txt").write_text(
        f"Yoda {yoda_entry}\nLuke {secrets['Luke']}\nLeia {secrets['Leia']}\n")
    server = ServerProcess(tmp_path)
    try:
        server.output.expect(f"Warning: the password of Leia in {tmp_path / 'credentials.txt'} starts with "
                             "'scrypt$' but is no valid hash entry; it is taken as a plain password")
        thief = server.connect()
        thief.send(Login("Yoda", yoda_entry, 7000))  # the stolen file's entry is no password
        assert thief.recv() == Error("invalid_password", "Invalid Password. Please try again")
        for username, password in secrets.items():
            client = server.connect()
            client.send(Login(username, password + "!", 7000))  # a wrong one first
            assert client.recv() == Error("invalid_password", "Invalid Password. Please try again")
            client.send(Login(username, password, 7000))
            assert client.recv() == Welcome(username)
        server.stop()
        output = "\n".join(server.output.settle(0.05))
        assert not any(secret in output for secret in [*secrets.values(), yoda_entry])
    finally:
        server.stop()
