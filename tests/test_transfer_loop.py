"""The model select loop (bench/transfer_loopback.py) over real loopback sockets: several
transfers in both directions on one socket per side, files verified, temporaries cleaned."""

from __future__ import annotations

import io
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench.transfer_loopback import Transfer, TransferLoop, alternating, open_socket
from core.transfer import Completed, Failed, Receiver, Sender, State


def outgoing(path: Path, peer: tuple[str, int], size: int | None = None) -> Transfer:
    sender = Sender(os.urandom(16), path.stat().st_size if size is None else size, time.monotonic(),
                    datagram_size=1_472)
    return Transfer(sender, peer, io.FileIO(path, "rb"), path)


def incoming(transfer_id: bytes, size: int, peer: tuple[str, int], directory: Path, name: str) -> Transfer:
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".tessenger-", suffix=".part")
    receiver = Receiver(transfer_id, size, time.monotonic(), window=1 << 20)
    return Transfer(receiver, peer, io.FileIO(fd, "wb"), directory / name, temp=Path(temp))


def run_both(left: TransferLoop, right: TransferLoop) -> None:
    threads = [threading.Thread(target=loop.run, kwargs={"until_finished": True}) for loop in (left, right)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a transfer did not end"


def test_transfers_both_ways_on_one_socket_each(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    rng = random.Random(1)
    files = {}
    for directory, name, size in ((a_dir, "one.bin", 300_000), (a_dir, "two.bin", 0), (b_dir, "three.bin", 123_457)):
        files[name] = directory / name
        files[name].write_bytes(rng.randbytes(size))
    a_sock, b_sock = open_socket(), open_socket()
    a_addr, b_addr = a_sock.getsockname(), b_sock.getsockname()
    a_loop, b_loop = TransferLoop(a_sock), TransferLoop(b_sock)
    for name, src_loop, dst_loop, src_addr, dst_addr, dst_dir in (
        ("one.bin", a_loop, b_loop, a_addr, b_addr, b_dir),
        ("two.bin", a_loop, b_loop, a_addr, b_addr, b_dir),
        ("three.bin", b_loop, a_loop, b_addr, a_addr, a_dir),
    ):
        sending = outgoing(files[name], dst_addr)
        size = files[name].stat().st_size
        dst_loop.add(incoming(sending.endpoint.transfer_id, size, src_addr, dst_dir, "got-" + name))
        src_loop.add(sending)
    run_both(a_loop, b_loop)
    for name, directory in (("one.bin", b_dir), ("two.bin", b_dir), ("three.bin", a_dir)):
        assert (directory / ("got-" + name)).read_bytes() == files[name].read_bytes()
    assert all(isinstance(t.outcome, Completed) for t in a_loop.finished + b_loop.finished)
    assert not [p for p in (*a_dir.iterdir(), *b_dir.iterdir()) if p.name.startswith(".tessenger-")]
    a_sock.close()
    b_sock.close()


def test_a_refused_transfer_leaves_no_file(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50_000))
    received = tmp_path / "in"
    received.mkdir()
    a_sock, b_sock = open_socket(), open_socket()
    a_loop, b_loop = TransferLoop(a_sock), TransferLoop(b_sock)
    sending = outgoing(source, b_sock.getsockname())
    # The audience was told 10,000 bytes: everything past them is refused.
    b_loop.add(incoming(sending.endpoint.transfer_id, 10_000, a_sock.getsockname(), received, "got"))
    a_loop.add(sending)
    run_both(a_loop, b_loop)
    assert b_loop.finished[0].outcome == Failed("data beyond the announced size")
    assert a_loop.finished[0].outcome == Failed("receiver aborted: data beyond the announced size")
    assert sending.endpoint.state is State.FAILED
    assert list(received.iterdir()) == []
    a_sock.close()
    b_sock.close()


def test_paired_benchmark_runs_warm_up_then_take_turns_going_first() -> None:
    """A ratio of two variants (MACs on/off, the controller on/off) must not charge one of
    them the slow first run of a case, nor always run it first."""
    calls: list[str] = []

    def variant(name: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            calls.append(name)
            return {"call": len(calls)}
        return run

    first, second = alternating(variant("A"), variant("B"), 3)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]
    assert [r["call"] for r in first] == [3, 6, 7] and [r["call"] for r in second] == [4, 5, 8]
