"""DatagramPort (shell/datagrams.py) and the batching rules (core/udp_batching.py): the transfers' datagrams through one UDP socket, batched
by the kernel where it can (UDP GSO/GRO), and never reordered, merged or cut otherwise."""

from __future__ import annotations

import errno
import socket
import sys
from typing import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from core.udp_batching import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SOL_UDP, UDP_GRO, gro_segment_size, gso_run_end
from shell.datagrams import DatagramPort

LINUX = sys.platform.startswith("linux")


def runs(datagrams: list[bytes], max_segments: int = GSO_MAX_SEGMENTS,
         max_bytes: int = GSO_MAX_BYTES) -> Iterator[list[bytes]]:
    start = 0
    while start < len(datagrams):
        end = gso_run_end(datagrams, start, max_segments, max_bytes)
        assert end > start
        yield datagrams[start:end]
        start = end


def numbered(sizes: list[int]) -> list[bytes]:
    """Datagrams of these sizes, each telling its place (so a swap or a cut shows)."""
    return [(i.to_bytes(4, "big") * (size // 4 + 1))[:size] for i, size in enumerate(sizes)]


# --- which datagrams go together -----------------------------------------------------------

sizes = st.lists(st.sampled_from([0, 1, 3, 26, 58, 1_400, 1_401, 1_472, 30_000, 65_507]) | st.integers(1, 2_000),
                 max_size=200)


@settings(max_examples=300)
@given(sizes=sizes, max_segments=st.integers(1, 70), max_bytes=st.integers(1, 70_000))
def test_runs_are_what_the_receiving_kernel_cuts_back_into_the_same_datagrams(
        sizes: list[int], max_segments: int, max_bytes: int) -> None:
    """The receiving kernel cuts a run at the size of its first datagram: so every datagram
    but the last has that size and the last is no longer; a run keeps the order, fits the
    limits, and the runs together are exactly the datagrams given."""
    datagrams = numbered(sizes)
    together: list[bytes] = []
    for run in runs(datagrams, max_segments, max_bytes):
        together += run
        if len(run) == 1:
            continue
        size = len(run[0])
        assert all(len(d) == size for d in run[:-1]) and len(run[-1]) <= size
        assert len(run) <= max_segments and sum(map(len, run)) <= max_bytes
        joined = b"".join(run)
        assert [joined[i:i + size] for i in range(0, len(joined), size)] == run
    assert together == datagrams


def test_equal_datagrams_go_in_runs_as_long_as_allowed() -> None:
    datagrams = [b"x" * 1_400] * 100 + [b"fin"]
    assert [len(run) for run in runs(datagrams)] == [46, 46, 9]  # the FIN rides with the last run
    assert [len(run) for run in runs([b"x" * 65_507] * 3)] == [1, 1, 1]
    assert [len(run) for run in runs([b"ab", b"abc", b"abc", b"a", b"a"])] == [1, 3, 1]  # never a longer one


def test_the_segment_size_of_a_coalesced_read() -> None:
    assert gro_segment_size([(SOL_UDP, UDP_GRO, (1_400).to_bytes(4, sys.byteorder))]) == 1_400
    assert gro_segment_size([]) == 0
    assert gro_segment_size([(socket.SOL_SOCKET, 1, b"\0\0\0\0")]) == 0


# --- over real loopback sockets --------------------------------------------------------------

def pair(offload: bool) -> tuple[DatagramPort, DatagramPort]:
    ports = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        ports.append(DatagramPort(sock, offload=offload))
    return ports[0], ports[1]


def receive_all(port: DatagramPort, count: int) -> tuple[list[bytes], int]:
    """``count`` datagrams, and in how many reads they came."""
    got: list[bytes] = []
    reads = 0
    port.sock.settimeout(5.0)  # blocking for the test: the datagrams are on their way
    while len(got) < count:
        batch, address = port.receive()
        got += batch
        reads += 1
    return got, reads


@pytest.mark.parametrize("offload", [True, False])
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([1_400, 1_400, 1_400, 700, 26, 58, 3_000]), max_size=60))
def test_datagrams_arrive_as_sent(offload: bool, sizes: list[int]) -> None:
    # (at most 60: all are sent before any is read, and must fit a receive buffer of Linux's
    # default size, 416 KiB as the kernel counts, wherever net.core.rmem_max is not raised)
    sender, receiver = pair(offload)
    try:
        datagrams = numbered(sizes)
        sender.send(datagrams, receiver.sock.getsockname())
        assert not sender.waiting
        got, _ = receive_all(receiver, len(datagrams))
        assert got == datagrams
    finally:
        sender.sock.close()
        receiver.sock.close()


@pytest.mark.skipif(not LINUX, reason="UDP GSO/GRO are Linux's")
def test_a_run_takes_one_read_with_offload_and_one_per_datagram_without() -> None:
    datagrams = numbered([1_400] * 92 + [58])
    for offload, reads in ((True, 2), (False, 93)):
        sender, receiver = pair(offload)
        try:
            sender.send(datagrams, receiver.sock.getsockname())
            if offload and not (sender._gso and receiver._gro):  # refused: the port fell back
                pytest.skip("this kernel does not batch UDP datagrams (UDP_SEGMENT/UDP_GRO)")
            got, count = receive_all(receiver, len(datagrams))
            assert got == datagrams and count == reads
        finally:
            sender.sock.close()
            receiver.sock.close()


# --- the socket says no ---------------------------------------------------------------------

class FakeSocket:
    """Accepts ``room`` sends, then raises BlockingIOError; ``sendmsg`` may fail outright."""

    def __init__(self, room: int = 1_000_000, sendmsg_error: int | None = None) -> None:
        self.room = room
        self.sendmsg_error = sendmsg_error
        self.wire: list[bytes] = []
        self.calls = 0
        self.lose: set[bytes] = set()

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def _take(self, datagrams: list[bytes]) -> None:
        self.calls += 1
        if self.room <= 0:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.room -= 1
        if datagrams[0] in self.lose:
            raise OSError(errno.ENOBUFS, "no buffer space")
        self.wire += datagrams

    def sendto(self, data: bytes, address: object) -> int:
        self._take([data])
        return len(data)

    def sendmsg(self, buffers: list[bytes], ancillary: object, flags: int, address: object) -> int:
        if self.sendmsg_error is not None:
            raise OSError(self.sendmsg_error, "no GSO here")
        self._take(list(buffers))
        return sum(map(len, buffers))


PEER = ("127.0.0.1", 9)


@pytest.mark.skipif(not LINUX, reason="UDP GSO is Linux's")
@pytest.mark.parametrize("error", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT])
def test_where_the_kernel_cannot_segment_every_datagram_goes_alone(error: int) -> None:
    sock = FakeSocket(sendmsg_error=error)
    port = DatagramPort(sock)  # type: ignore[arg-type]
    datagrams = numbered([1_400] * 100)
    port.send(datagrams, PEER)
    port.send(datagrams[:3], PEER)
    assert sock.wire == datagrams + datagrams[:3] and sock.calls == 103


@settings(max_examples=200)
@given(sizes=st.lists(st.sampled_from([1_400, 1_400, 26]), min_size=1, max_size=200), room=st.integers(0, 10),
       offload=st.booleans(), later=st.integers(0, 5))
def test_what_the_socket_refuses_waits_in_order(sizes: list[int], room: int, offload: bool, later: int) -> None:
    sock = FakeSocket(room)
    port = DatagramPort(sock, offload=offload)  # type: ignore[arg-type]
    datagrams = numbered(sizes)
    port.send(datagrams, PEER)
    more = numbered([30] * later)
    port.send(more, PEER)  # behind whatever waits
    while port.waiting:
        sock.room = 3
        port.flush()
    assert sock.wire == datagrams + more


def test_a_datagram_the_socket_cannot_send_is_lost_and_the_rest_goes() -> None:
    sock = FakeSocket()
    port = DatagramPort(sock, offload=False)  # type: ignore[arg-type]
    datagrams = numbered([100] * 5)
    sock.lose = {datagrams[1]}
    port.send(datagrams, PEER)
    assert sock.wire == datagrams[:1] + datagrams[2:] and not port.waiting
