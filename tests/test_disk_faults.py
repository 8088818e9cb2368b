"""A full, read-only or failing disk: the request whose line cannot be stored gets an error and
no acknowledgement, a login that cannot be recorded is refused, nothing else is affected, and
the server recovers by itself with contiguous numbering.

Unit tests run the logs and an in-process server over a fault-injecting file layer; the
end-to-end test fills a real tiny tmpfs (mounted by the test when running as root).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from core.messages import ActiveUser, ActiveUsers, Error, GroupCreated, CreateGroup, Login, MsgSent, MsgTo, Welcome
from core.rules import Chat, parse_credentials
from server import LOGIN_STORAGE_ERROR, STORAGE_ERROR, Limits, Server
from shell.logs import Disk, Logs
from tests.harness import CREDENTIALS, PASSWORDS, ServerProcess, WireClient, wait_for
from tests.test_server import login

LINE = "1; 01 Jun 2023 15:00:01; Luke; one\n"


class FaultyDisk(Disk):
    """Writes fail with ``error`` while it is set, after taking half of what they were given
    (as a full disk does); with ``readonly`` the cut that undoes a torn write fails as well."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.readonly = False
        self._torn = False

    def _fail(self) -> None:
        raise OSError(self.error, os.strerror(self.error))

    def open(self, path: Path, flags: int) -> int:
        if self.error is not None and (flags & os.O_TRUNC or not path.exists()):
            self._fail()  # a new file (a group's log, userlog.txt.tmp) needs an inode and space
        return super().open(path, flags)

    def write(self, fd: int, data: memoryview) -> int:
        if self.error is None:
            return super().write(fd, data)
        self._torn = not self._torn
        if self._torn and len(data) > 1:  # a torn write first, then the error
            return super().write(fd, data[: len(data) // 2])
        self._fail()

    def truncate(self, fd: int, size: int) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        super().truncate(fd, size)


# --- the logs ------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_a_failed_write_is_taken_back_and_named(tmp_path: Path, error: int) -> None:
    disk = FaultyDisk()
    logs = Logs(tmp_path, False, disk)
    logs.append("messagelog.txt", LINE)
    assert logs.flush() == set()
    disk.error = error
    logs.append("messagelog.txt", LINE.replace("1;", "2;") * 3)
    logs.append("g_messagelog.txt", "")  # a new file needs an inode: it fails too
    assert logs.flush() == {"messagelog.txt", "g_messagelog.txt"}
    assert (tmp_path / "messagelog.txt").read_text() == LINE  # no torn tail left behind
    assert logs.events[0] == f"Cannot write messagelog.txt: {os.strerror(error)}; retrying with the next request"
    disk.error = None
    logs.append("messagelog.txt", LINE.replace("1;", "2;"))
    assert logs.flush() == set()
    assert (tmp_path / "messagelog.txt").read_text() == LINE + LINE.replace("1;", "2;")
    assert logs.events[-1] == "messagelog.txt can be written again"


def test_a_tail_that_cannot_be_cut_is_cut_before_the_next_write(tmp_path: Path) -> None:
    disk = FaultyDisk()
    logs = Logs(tmp_path, False, disk)
    logs.append("messagelog.txt", LINE)
    logs.flush()
    disk.error, disk.readonly = errno.EROFS, True
    logs.append("messagelog.txt", "2; torn\n")
    assert logs.flush() == {"messagelog.txt"}
    assert (tmp_path / "messagelog.txt").read_text() == LINE + "2; t"  # a torn tail, for now
    disk.error, disk.readonly = None, False
    logs.append("messagelog.txt", "2; whole\n")
    assert logs.flush() == set()
    assert (tmp_path / "messagelog.txt").read_text() == LINE + "2; whole\n"


def test_a_userlog_that_cannot_be_written_keeps_the_old_one(tmp_path: Path) -> None:
    disk = FaultyDisk()
    logs = Logs(tmp_path, False, disk)
    assert logs.write_userlog("1; a\n")
    disk.error = errno.ENOSPC
    assert not logs.write_userlog("1; a\n2; b\n")
    assert (tmp_path / "userlog.txt").read_text() == "1; a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userlog.txt"]  # no temporary file left


# --- the server ----------------------------------------------------------------------------

@pytest.fixture
def faulty_server(tmp_path: Path) -> Iterator[tuple[Server, FaultyDisk]]:
    """The real Server class over a fault-injecting disk, its loop on a thread."""
    disk = FaultyDisk()
    logs = Logs(tmp_path, False, disk)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    chat = Chat(parse_credentials(CREDENTIALS.read_text()), 3)
    server = Server(listener, chat, logs, Limits(), None)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            timeout = server._timeout()
            server.turn(0.02 if timeout is None else min(timeout, 0.02))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server, disk
    stop.set()
    thread.join()
    server.shutdown()


def connect(server: Server) -> WireClient:
    return WireClient(server.listener.getsockname())


def log_in(server: Server, username: str) -> WireClient:
    client = connect(server)
    client.send(Login(username, PASSWORDS[username], 7000))
    assert client.recv() == Welcome(username)
    return client


def test_a_full_disk_refuses_only_the_requests_it_cannot_store(faulty_server: tuple[Server, FaultyDisk]) -> None:
    server, disk = faulty_server
    yoda, luke = log_in(server, "Yoda"), log_in(server, "Luke")
    yoda.send(MsgTo(["Luke"], "one"))
    assert isinstance(yoda.recv(), MsgSent) and luke.recv().text == "one"
    disk.error = errno.ENOSPC
    yoda.send(MsgTo(["Luke"], "lost"), CreateGroup("jedi", ["Luke"]), ActiveUser())
    assert yoda.recv() == Error("command", STORAGE_ERROR)  # not acknowledged, and Luke gets nothing
    assert yoda.recv() == Error("command", STORAGE_ERROR)  # the group's log cannot be created either
    active = yoda.recv()  # what needs no disk is unaffected
    assert isinstance(active, ActiveUsers) and [u.username for u in active.users] == ["Luke"]
    hans = connect(server)  # a login that cannot be recorded in userlog.txt is refused
    hans.send(Login("Hans", PASSWORDS["Hans"], 7000))
    assert hans.recv() == Error("protocol", LOGIN_STORAGE_ERROR)
    assert hans.closed_by_server()
    luke.send(MsgTo(["Yoda"], "also lost"))
    assert luke.recv() == Error("command", STORAGE_ERROR)
    disk.error = None  # space is back: the next requests are stored, numbered on without a gap
    yoda.send(MsgTo(["Luke"], "two"), CreateGroup("jedi", ["Luke"]))
    assert isinstance(yoda.recv(), MsgSent) and luke.recv().text == "two"
    assert isinstance(yoda.recv(), GroupCreated)
    lines = (server.logs.directory / "messagelog.txt").read_text().splitlines()
    assert [line.split("; ")[0] for line in lines] == ["1", "2"]
    assert [line.split("; ")[3] for line in lines] == ["one", "two"]
    hans = log_in(server, "Hans")
    wait_for(lambda: "Hans" in (server.logs.directory / "userlog.txt").read_text(), what="Hans in userlog.txt")


# --- a real full filesystem ------------------------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted on a directory of this test's own (unique per test and process)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount_point = tmp_path / f"tmpfs-{os.getpid()}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem; return the file that holds them."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_fill_send_free_send_again_on_a_real_filesystem(tiny_tmpfs: Path) -> None:
    server = ServerProcess(tiny_tmpfs, 3, "--flood-rate", "0")
    try:
        yoda, luke = login(server, "Yoda"), login(server, "Luke")
        yoda.send(MsgTo(["Luke"], "before"))
        assert isinstance(yoda.recv(), MsgSent) and luke.recv().text == "before"
        filler = fill(tiny_tmpfs)
        acknowledged = ["before"]
        for i in range(20):  # the log's last page still has room for a few lines
            yoda.send(MsgTo(["Luke"], f"{i} " + "x" * 990))
            reply = yoda.recv()
            if reply == Error("command", STORAGE_ERROR):
                break
            assert isinstance(reply, MsgSent) and luke.recv().text.startswith(f"{i} ")
            acknowledged.append(f"{i} " + "x" * 990)
        else:
            pytest.fail("a full filesystem took 20 KB of messages")
        server.output.expect("Cannot write messagelog.txt: No space left on device; retrying with the next request")
        hans = server.connect()
        hans.send(Login("Hans", PASSWORDS["Hans"], 7000))
        assert hans.recv() == Error("protocol", LOGIN_STORAGE_ERROR)
        luke.send(ActiveUser())  # the others are served as before
        assert [u.username for u in luke.recv().users] == ["Yoda"]
        filler.unlink()  # space is back
        yoda.send(MsgTo(["Luke"], "after"))
        assert isinstance(yoda.recv(), MsgSent) and luke.recv().text == "after"
        acknowledged.append("after")
        lines = server.log("messagelog.txt").splitlines()
        assert [int(line.split("; ")[0]) for line in lines] == list(range(1, len(lines) + 1))
        assert [line.split("; ", 3)[3] for line in lines] == acknowledged
        login(server, "Hans")
        wait_for(lambda: re.search(r"; Hans; ", server.log("userlog.txt")), what="Hans in userlog.txt")
    finally:
        server.stop()
