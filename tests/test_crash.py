"""Crash safety: after ``kill -9`` at any moment every log holds whole lines numbered 1..n, every
acknowledged message is in its log, and the next start repairs a torn tail and numbers on.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from core.messages import CreateGroup, GroupCreated, GroupMsg, GroupSent, MsgSent, MsgTo
from server import Logs
from tests.harness import ServerProcess
from tests.test_server import TIMESTAMP, login

LINE = re.compile(rf"(\d+); {TIMESTAMP}; (\w+); (.+)")


def logged_texts(path: Path) -> list[str]:
    """The messages of a log, checking that it is whole lines numbered 1, 2, 3, ..."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "a torn last line survived the restart"
    matches = [LINE.fullmatch(line) for line in text.splitlines()]
    assert all(matches), [line for line, m in zip(text.splitlines(), matches) if not m]
    assert [int(m.group(1)) for m in matches] == list(range(1, len(matches) + 1))
    return [m.group(3) for m in matches]


def storm_until_killed(server: ServerProcess, cycle: int, kill_after: int) -> tuple[list[str], list[str]]:
    """Yoda pipelines private and group messages until the server is killed (-9) once
    ``kill_after`` of them are acknowledged. Returns the acknowledged texts: private, group."""
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send(CreateGroup("storm", ["Luke"]))
    assert isinstance(yoda.recv(), GroupCreated)
    stop = threading.Event()

    def pump() -> None:
        sent = 0
        try:
            while not stop.is_set():
                yoda.send(*(message for i in range(sent, sent + 50)
                            for message in (MsgTo(["Yoda"], f"c{cycle} m{i}"), GroupMsg("storm", f"c{cycle} g{i}"))))
                sent += 50
        except OSError:
            pass  # the server is gone

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    private: list[str] = []
    group: list[str] = []
    try:
        while True:  # replies come in request order, so the n-th acknowledgement is of text n
            reply = yoda.recv()
            if isinstance(reply, MsgSent):
                private.append(f"c{cycle} m{len(private)}")
            elif isinstance(reply, GroupSent):
                group.append(f"c{cycle} g{len(group)}")
            if len(private) + len(group) == kill_after:
                server.kill()  # acknowledgements already on their way still count
    except (AssertionError, OSError):
        assert server.process.poll() is not None, "the storm stopped while the server was alive"
    finally:
        stop.set()
        thread.join()
        luke.close()
    return private, group


@pytest.mark.parametrize("flags", [[], ["--fsync"]], ids=["page-cache", "fsync"])
def test_kill_9_during_a_message_storm_loses_no_acknowledged_message(tmp_path: Path, flags: list[str]) -> None:
    acked_private: list[str] = []
    acked_group: list[str] = []
    for cycle, kill_after in enumerate([300, 1200, 2500]):
        # a storm from one client: no flood control, which would slow it (tested elsewhere)
        server = ServerProcess(tmp_path, 3, "--quiet", "--flood-rate", "0", *flags)  # each start repairs the last crash
        assert server.log("userlog.txt") == ""
        private, group = storm_until_killed(server, cycle, kill_after)
        assert len(private) + len(group) >= kill_after
        acked_private += private
        acked_group += group
    server = ServerProcess(tmp_path, 3, *flags)
    try:
        for log, acked in (("messagelog.txt", acked_private), ("storm_messagelog.txt", acked_group)):
            logged = logged_texts(tmp_path / log)
            assert set(acked) <= set(logged)  # every acknowledged message survived
            assert len(set(logged)) == len(logged)  # and none is there twice
        numbers = len(logged_texts(tmp_path / "messagelog.txt"))
        yoda = login(server, "Yoda")
        yoda.send(MsgTo(["Yoda"], "after the storms"))
        yoda.recv(), yoda.recv()
        assert server.log("messagelog.txt").splitlines()[-1].startswith(f"{numbers + 1}; ")
    finally:
        server.stop()


# --- the repair itself ----------------------------------------------------------------------------

WHOLE = "1; 01 Jun 2023 15:00:01; Luke; one\n"


def test_recover_cuts_only_torn_last_lines(tmp_path: Path) -> None:
    many = "".join(f"{n}; 01 Jun 2023 15:00:01; Luke; {'x' * 50}\n" for n in range(1, 1001))  # beyond the scanned tail
    files = {
        "messagelog.txt": (WHOLE + "2; 01 Jun 2023 15:00:02; Luke; t").encode() + "é".encode()[:1],
        "jedi_messagelog.txt": WHOLE.encode(),
        "sith_messagelog.txt": b"1; 01 Jun 2023 15:00:01; Vad",
        "empty_messagelog.txt": b"",
        "big_messagelog.txt": (many + "1001; 01 Jun").encode(),
        "notes.txt": b"not a log, so not touched",
        "bad_name_messagelog.txt": b"no group can have this name",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    history = Logs(tmp_path, False).recover()
    assert history == {"messagelog.txt": 1, "jedi_messagelog.txt": 1, "sith_messagelog.txt": 0,
                       "empty_messagelog.txt": 0, "big_messagelog.txt": 1000}
    assert (tmp_path / "messagelog.txt").read_text() == WHOLE
    assert (tmp_path / "jedi_messagelog.txt").read_text() == WHOLE
    assert (tmp_path / "sith_messagelog.txt").read_bytes() == b""
    assert (tmp_path / "big_messagelog.txt").read_text() == many
    for name in ("notes.txt", "bad_name_messagelog.txt"):
        assert (tmp_path / name).read_bytes() == files[name]


def test_a_shutdown_after_an_interrupted_flush_writes_no_line_twice(tmp_path: Path) -> None:
    """The lines of a flush cut short are never written again by the flush at shutdown."""
    logs = Logs(tmp_path, False)
    logs.append("messagelog.txt", WHOLE)
    logs.append("x/y_messagelog.txt", "cannot be opened\n")  # fails after the first file is written
    assert logs.flush() == {"x/y_messagelog.txt"}
    logs.close()
    assert (tmp_path / "messagelog.txt").read_text() == WHOLE
