"""/p2pvideo and /groupvideo end to end: real server.py, real client.py processes, real UDP.

Each client runs in its own directory (its receive directory) with stdin and stdout piped.
Tests wait for lines or for files, never for time. A transfer that must still be running
when something else happens is made slow with small datagrams (``--datagram-size 200``:
a few MB/s) rather than with sleeps.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from core.transfer_wire import Kind, encode_abort, encode_fin
from tests.client_harness import PROMPT, TIMESTAMP, ClientProcess, TerminalClient
from tests.harness import PASSWORDS, ROOT, ServerProcess, wait_for

Start = Callable[..., ClientProcess]
SLOW = ("--datagram-size", "200")  # small datagrams: a few MB/s, so a transfer lasts a while


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    clients: list[ClientProcess] = []

    def start_client(server: ServerProcess, username: str, *flags: str) -> ClientProcess:
        client = ClientProcess(server.port, tmp_path / username, *flags)
        clients.append(client)
        return client.login(username)

    yield start_client
    for client in clients:
        client.stop()


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def files(client: ClientProcess) -> list[str]:
    """Everything in the client's directory but the files it sends (named ``*.bin``)."""
    return sorted(name for name in os.listdir(client.workdir) if not name.endswith(".bin") or "_" in name)


def partial_file(client: ClientProcess, least: int = 1) -> Path:
    """Wait until a temporary file in ``client``'s directory holds at least ``least`` bytes."""
    def found() -> Path | None:
        for path in client.workdir.glob(".*.part"):
            try:
                if path.stat().st_size >= least:
                    return path
            except FileNotFoundError:
                pass
        return None
    return wait_for(found, what="a partial file")  # type: ignore[return-value]


def udp_port(server: ServerProcess, username: str) -> int:
    def port() -> int | None:
        for line in server.log("userlog.txt").splitlines():
            fields = line.split("; ")
            if fields[2] == username:
                return int(fields[4])
        return None
    return wait_for(port, what=f"{username} in the userlog")  # type: ignore[return-value]


def test_a_file_arrives_byte_identical_under_the_presenters_name(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda"), start(server, "Luke")
    data = make_file(yoda.workdir / "video.bin", 3 * 1024 * 1024 + 7)
    assert yoda.command("/p2pvideo Luke video.bin") == ["Sending video.bin (3.0 MiB) to Luke."]
    yoda.output.expect("video.bin has been uploaded")
    luke.output.expect(r"Receiving video\.bin \(3\.0 MiB\) from Yoda\.")
    luke.output.expect(r"Received video\.bin from Yoda \(saved as Yoda_video\.bin\)")
    assert (luke.workdir / "Yoda_video.bin").read_bytes() == data
    assert files(luke) == ["Yoda_video.bin"]  # no temporary file left
    server.output.expect(re.compile(r"Yoda is sending video\.bin \(3145735 bytes\) to Luke\..*"))


def test_an_empty_file(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda"), start(server, "Luke")
    (yoda.workdir / "empty.bin").write_bytes(b"")
    assert yoda.command("/p2pvideo Luke empty.bin") == ["Sending empty.bin (0 bytes) to Luke."]
    yoda.output.expect("empty.bin has been uploaded")
    luke.output.expect(r"Received empty\.bin from Yoda \(saved as Yoda_empty\.bin\)")
    assert (luke.workdir / "Yoda_empty.bin").read_bytes() == b""
    assert files(luke) == ["Yoda_empty.bin"]


def test_a_resent_file_replaces_the_earlier_copy(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda"), start(server, "Luke")
    for content in (b"first take", b"second"):
        (yoda.workdir / "take.bin").write_bytes(content)
        yoda.command("/p2pvideo Luke take.bin")
        luke.output.expect(r"Received take\.bin from Yoda \(saved as Yoda_take\.bin\)")
        assert (luke.workdir / "Yoda_take.bin").read_bytes() == content
    assert files(luke) == ["Yoda_take.bin"]


def test_transfers_both_ways_at_once(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda", *SLOW), start(server, "Luke", *SLOW)
    one = make_file(yoda.workdir / "one.bin", 4 * 1024 * 1024)
    two = make_file(luke.workdir / "two.bin", 4 * 1024 * 1024)
    yoda.type("/p2pvideo Luke one.bin")
    luke.type("/p2pvideo Yoda two.bin")
    # each side sends and receives at the same time: a download starts before its upload ends
    for client, sent, other in ((yoda, "one.bin", "Luke"), (luke, "two.bin", "Yoda")):
        client.output.expect(f"{sent} has been uploaded", timeout=30)
        client.output.cursor = 0
        client.output.expect(f"Received {'two' if sent == 'one.bin' else 'one'}\\.bin from {other} .*", timeout=30)
        lines = client.output.lines
        receiving = next(i for i, l in enumerate(lines) if l.startswith("Receiving "))
        ends = [i for i, l in enumerate(lines) if l.startswith("Received ") or l == f"{sent} has been uploaded"]
        assert receiving < min(ends), lines
    assert (luke.workdir / "Yoda_one.bin").read_bytes() == one
    assert (yoda.workdir / "Luke_two.bin").read_bytes() == two


def test_chat_goes_on_during_a_transfer(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda", *SLOW), start(server, "Luke")
    data = make_file(yoda.workdir / "long.bin", 8 * 1024 * 1024)
    yoda.command("/p2pvideo Luke long.bin")
    partial_file(luke)  # under way
    (sent,) = yoda.command("/msgto Luke still there?")
    assert re.fullmatch(rf"message sent at {TIMESTAMP}\.", sent)
    message = luke.output.wait(lambda l: l.endswith(", Yoda: still there?"), "the message")
    received = luke.output.wait(lambda l: l == "Received long.bin from Yoda (saved as Yoda_long.bin)", "the file",
                                timeout=30)
    assert message < received  # delivered while the file was still arriving
    yoda.output.expect("long.bin has been uploaded", timeout=30)
    assert (luke.workdir / "Yoda_long.bin").read_bytes() == data


def test_the_audience_logging_out_mid_transfer(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda", *SLOW), start(server, "Luke")
    make_file(yoda.workdir / "big.bin", 32 * 1024 * 1024)
    yoda.command("/p2pvideo Luke big.bin")
    luke.output.expect(r"Receiving big\.bin \(32\.0 MiB\) from Yoda\.")
    partial_file(luke)
    luke.type("/logout")
    left = time.monotonic()
    bye, failed = luke.output.rest()
    assert bye == "Bye, Luke!"
    assert re.fullmatch(r"Error. Receiving big\.bin from Yoda failed: Luke logged out \(the \d+% received is kept: "
                        r"sending the file again resumes there\)", failed)
    assert luke.exit_code() == 0
    assert files(luke) == [".Yoda_big.bin.part", ".Yoda_big.bin.part.resume"]  # for a resume; no final name
    # by the ABORT, or by the server's news that Luke left, whichever comes first
    yoda.output.expect("Error. Transfer of big.bin to Luke failed: (receiver aborted: Luke logged out|Luke left)",
                       timeout=5)
    assert time.monotonic() - left < 5
    assert yoda.command("/msgto Luke back?") == ["Error. Luke is not active."]  # and Yoda chats on


def test_the_presenter_logging_out_mid_transfer(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda", *SLOW), start(server, "Luke")
    make_file(yoda.workdir / "big.bin", 32 * 1024 * 1024)
    yoda.command("/p2pvideo Luke big.bin")
    partial_file(luke)
    yoda.close_stdin()  # Ctrl-D
    assert yoda.output.rest() == ["Bye, Yoda!", "Error. Transfer of big.bin to Luke failed: Yoda logged out"]
    luke.output.expect(r"Error. Receiving big\.bin from Yoda failed: (sender aborted: Yoda logged out|Yoda left) "
                       r"\(the \d+% received is kept: sending the file again resumes there\)", timeout=5)
    assert files(luke) == [".Yoda_big.bin.part", ".Yoda_big.bin.part.resume"]


def test_forged_datagrams_change_nothing(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda", *SLOW), start(server, "Luke")
    data = make_file(yoda.workdir / "clip.bin", 8 * 1024 * 1024)
    yoda.command("/p2pvideo Luke clip.bin")
    part = partial_file(luke)
    # (the right id with the right address but a wrong tag: tests/test_transfers.py, which knows the id)
    transfer_id = os.urandom(16)
    wrong_id = bytes(16)
    luke_port, yoda_port = udp_port(server, "Luke"), udp_port(server, "Yoda")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mallory:  # 127.0.0.1, another port
        mallory.bind(("127.0.0.1", 0))
        forged = [
            os.urandom(1000),  # noise
            b"",
            encode_abort(wrong_id, "forged"),  # an id no one announced
            encode_abort(transfer_id, "forged"),  # the right id from the wrong address
            encode_fin(transfer_id, len(data), bytes(32)),
            bytes([0x71, Kind.DATA]) + transfer_id + (0).to_bytes(4, "big") + (174).to_bytes(4, "big") + bytes(174),
        ]
        for datagram in forged:
            for port in (luke_port, yoda_port):
                mallory.sendto(datagram, ("127.0.0.1", port))
    # the transfer was still under way after the forgeries, and finishes intact
    assert part.exists()
    luke.output.expect(r"Received clip\.bin from Yoda \(saved as Yoda_clip\.bin\)", timeout=30)
    yoda.output.expect("clip.bin has been uploaded", timeout=30)
    assert (luke.workdir / "Yoda_clip.bin").read_bytes() == data
    # the forged datagrams were not mistaken for anything: no error line anywhere
    assert not [l for l in luke.output.lines + yoda.output.lines if l.startswith("Error")]


def test_names_that_could_leave_the_directory_are_refused_locally(server: ServerProcess, start: Start) -> None:
    yoda, luke = start(server, "Yoda"), start(server, "Luke")
    (yoda.workdir / "..\\evil.bin").write_bytes(b"x")
    assert yoda.command("/p2pvideo Luke ..\\evil.bin") == [
        "Error. Cannot send ..\\evil.bin: a file name must be printable, without '..' or '\\'."]
    assert yoda.command("/p2pvideo Luke ..") == [
        "Error. Cannot send ..: a file name must be printable, without '..' or '\\'."]
    # a path is fine: only its basename travels, and that is what the audience saves
    (yoda.workdir / "sub").mkdir()
    (yoda.workdir / "sub" / "inner.bin").write_bytes(b"inner")
    yoda.command("/p2pvideo Luke ../" + yoda.workdir.name + "/sub/inner.bin")
    luke.output.expect(r"Received inner\.bin from Yoda \(saved as Yoda_inner\.bin\)")
    assert files(luke) == ["Yoda_inner.bin"]
    assert luke.command("/activeuser")[0].startswith("Yoda, ")  # nothing else was offered


def test_groupvideo_to_the_joined_members_only(server: ServerProcess, start: Start) -> None:
    yoda, luke, leia, hans = (start(server, name) for name in ("Yoda", "Luke", "Leia", "Hans"))
    yoda.command("/creategroup jedi Luke Leia Hans")
    for member in (luke, leia):
        member.output.expect("Yoda added you to group chat jedi. Use /joingroup jedi to join.")
        member.command("/joingroup jedi")
    data = make_file(yoda.workdir / "clip.bin", 1024 * 1024)
    assert yoda.command("/groupvideo jedi clip.bin") == ["Sending clip.bin (1.0 MiB) to 2 members of jedi: Luke, Leia."]
    summary = yoda.output.until("clip.bin: uploaded to 2 of 2 members.")
    assert sorted(summary) == ["clip.bin has been uploaded to Leia", "clip.bin has been uploaded to Luke"]
    for member in (luke, leia):
        member.output.expect(r"Received clip\.bin from Yoda \(saved as Yoda_clip\.bin\)")
        assert (member.workdir / "Yoda_clip.bin").read_bytes() == data
    assert files(hans) == []
    hans.output.expect("Yoda added you to group chat jedi. Use /joingroup jedi to join.")
    assert hans.command("/activeuser")[0].startswith("Yoda, ")  # Hans, not joined, was offered nothing


def test_progress_is_shown_in_place_on_a_terminal(server: ServerProcess, start: Start, tmp_path: Path) -> None:
    readline = pytest.importorskip("readline")
    if not hasattr(ctypes.CDLL(readline.__file__), "rl_clear_visible_line"):
        pytest.skip("GNU readline 7 or later is needed for line editing")
    start(server, "Luke", *SLOW)  # accepts only small datagrams: the sender slows down to them
    yoda = TerminalClient(server.port, tmp_path / "terminal")
    try:
        yoda.expect("Username: ")
        yoda.type("Yoda\r")
        yoda.expect("Password: ")
        yoda.type(PASSWORDS["Yoda"] + "\r")
        yoda.expect(PROMPT + " ")
        make_file(tmp_path / "terminal" / "big.bin", 8 * 1024 * 1024)
        yoda.type("/p2pvideo Luke big.bin\r")
        yoda.expect("Sending big.bin (8.0 MiB) to Luke.\r\n")
        yoda.type("/msgto Lu")  # typing goes on under the progress line
        yoda.expect("big.bin to Luke: ")
        yoda.expect(" MiB ")
        yoda.expect(" MB/s ETA ")
        yoda.expect("\r\n" + PROMPT + " /msgto Lu")  # the input line is redrawn below it
        # each redraw first goes up to the progress line's row and clears it: drawn in place
        before = yoda.expect("big.bin has been uploaded\r\n", timeout=30)
        assert "\x1b[A\r\x1b[K" in before
        assert yoda.expect(PROMPT + " /msgto Lu") == ""  # the progress line went with the transfer
        yoda.type("ke done\r")
        yoda.expect("message sent at ")
        yoda.type("\x03")
        yoda.expect("Bye, Yoda!")
    finally:
        yoda.stop()


def test_receive_directory_and_size_limit(server: ServerProcess, start: Start, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    yoda = start(server, "Yoda")
    luke = start(server, "Luke", "--receive-dir", str(inbox), "--max-receive-size", "1K")
    small = make_file(yoda.workdir / "small.bin", 1024)
    yoda.command("/p2pvideo Luke small.bin")
    luke.output.expect(r"Received small\.bin from Yoda \(saved as Yoda_small\.bin\)")
    assert (inbox / "Yoda_small.bin").read_bytes() == small
    make_file(yoda.workdir / "large.bin", 1025)
    yoda.command("/p2pvideo Luke large.bin")
    limit = "the file (1025 bytes) exceeds the limit of 1024 bytes (--max-receive-size)"
    luke.output.expect(re.escape(f"Error. Refused large.bin from Yoda: {limit}."))
    # the refusal may overtake Yoda's own transfer_ready, and then shows before the prompt
    yoda.output.cursor = 0
    yoda.output.expect(re.escape(f"Error. Transfer of large.bin to Luke failed: receiver aborted: {limit}"))
    assert sorted(os.listdir(inbox)) == ["Yoda_small.bin"] and files(luke) == []


def test_a_lossy_network_still_delivers_the_file_intact(server: ServerProcess, start: Start) -> None:
    lossy = ("--simulate-loss", "0.1", "--datagram-size", "8000")
    yoda, luke = start(server, "Yoda", *lossy), start(server, "Luke", *lossy)
    data = make_file(yoda.workdir / "video.bin", 2 * 1024 * 1024)
    yoda.command("/p2pvideo Luke video.bin")
    luke.output.expect(r"Received video\.bin from Yoda \(saved as Yoda_video\.bin\)", timeout=30)
    yoda.output.expect("video.bin has been uploaded", timeout=30)
    assert (luke.workdir / "Yoda_video.bin").read_bytes() == data


@pytest.mark.parametrize("flags, pattern", [
    (["--datagram-size", "89"], r"Invalid datagram size: 89\. It must be an integer between 90 and 65507"),
    (["--datagram-size", "65508"], r"Invalid datagram size: 65508\. .*"),
    (["--datagram-size", "big"], r"Invalid datagram size: big\. .*"),
    (["--max-receive-size", "12X"], r"Invalid maximum receive size: 12X\. .*"),
    (["--simulate-loss", "1"], r"Invalid loss: 1\.0\. .*"),
])
def test_bad_transfer_flags_give_one_line_and_fail(tmp_path: Path, flags: list[str], pattern: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "client.py"), "127.0.0.1", "5000", "0", *flags],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(pattern, line), line
