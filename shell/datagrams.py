"""The client's UDP socket: the transfers' datagrams in and out, batched by the kernel where it can.

``DatagramPort`` wraps the non-blocking socket (used by ``client.py`` and by
``bench/transfer_loopback.py``'s ``TransferLoop`` alike); ``bind_udp`` opens it with large
buffers; ``keep_freed_memory`` keeps the heap the received datagrams churn through.
``core/udp_batching.py`` holds the batching rules, this module the system calls.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from collections import deque
from typing import Sequence

from core.client_session import Address
from core.udp_batching import NO_GSO, READ_SIZE, SOL_UDP, UDP_GRO, UDP_SEGMENT, gro_segment_size, gso_run_end

SOCKET_BUFFER = 4 * 1024 * 1024  # asked for SO_RCVBUF/SO_SNDBUF; Linux doubles it, capped by [rw]mem_max

_SEGMENT = struct.Struct("=H")  # UDP_SEGMENT's value: a u16 in host order
_GRO_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0  # UDP_GRO's value: an int


class DatagramPort:
    """A non-blocking UDP socket as the transfers use it, in both directions.

    ``send`` sends datagrams in order; whatever the socket refuses (its buffer full) waits,
    in order, until ``flush`` on writability: while ``waiting``, the shell watches for it.
    A datagram that cannot go for any other reason is lost, as on a network: the protocol
    resends. ``receive`` returns the datagrams of one read.

    At small datagrams a system call per datagram is much of a transfer's CPU (measured
    here at 1,400 bytes: 2.5 us per ``recvfrom``, 3.4 per ``sendto``, against about 4 us of
    the protocol's own work per datagram on each side), so on Linux a run of equal-sized
    datagrams goes out in one ``sendmsg`` (UDP GSO) and comes in as one read (UDP GRO): 46
    datagrams of 1,400 bytes per call. The datagrams on the wire are the same. Where the
    kernel cannot segment (``NO_GSO``), the port falls back to one call per datagram for
    good. ``offload=False`` never batches (for comparisons).
    """

    def __init__(self, sock: socket.socket, *, offload: bool = True) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._backlog: deque[tuple[bytes, Address]] = deque()
        linux = sys.platform.startswith("linux")
        self._gso = offload and linux
        self._gro = offload and linux and _enable_gro(sock)

    @property
    def waiting(self) -> bool:
        """Datagrams the socket refused are waiting: call ``flush`` when it is writable."""
        return bool(self._backlog)

    def send(self, datagrams: Sequence[bytes], address: Address) -> None:
        """Send ``datagrams`` to ``address`` in order, after anything still waiting."""
        if not self._backlog:
            sent = self._send_runs(datagrams, address)
            if sent == len(datagrams):
                return
            datagrams = datagrams[sent:]
        self._backlog.extend((datagram, address) for datagram in datagrams)

    def flush(self) -> None:
        """Send what is waiting, in order, until the socket refuses again."""
        backlog = self._backlog
        sendto = self.sock.sendto
        while backlog:
            datagram, address = backlog[0]
            try:
                sendto(datagram, address)
            except BlockingIOError:
                return
            except OSError:
                pass  # lost, as on a network: the protocol resends
            backlog.popleft()

    def receive(self) -> tuple[list[bytes], Address]:
        """The datagrams of one read and who sent them: one datagram, or a run the kernel
        coalesced, cut back into its datagrams. Raises ``BlockingIOError`` when there is
        nothing to read, and other ``OSError`` as ``recvfrom`` does (an ICMP error)."""
        if not self._gro:
            datagram, address = self.sock.recvfrom(READ_SIZE)
            return [datagram], address
        data, ancillary, _flags, address = self.sock.recvmsg(READ_SIZE, _GRO_SPACE)
        segment = gro_segment_size(ancillary) if ancillary else 0
        if segment and len(data) > segment:
            return [data[start:start + segment] for start in range(0, len(data), segment)], address
        return [data], address

    def _send_runs(self, datagrams: Sequence[bytes], address: Address) -> int:
        """Send from the first datagram on until the socket refuses; how many are done with
        (sent or lost)."""
        sendto = self.sock.sendto
        count = len(datagrams)
        position = 0
        while position < count:
            end = gso_run_end(datagrams, position) if self._gso else position + 1
            try:
                if end - position == 1:
                    sendto(datagrams[position], address)
                else:
                    self._send_run(datagrams[position:end], address)
            except BlockingIOError:
                return position  # nothing of this run went
            except OSError as exc:
                if end - position > 1 and exc.errno in NO_GSO:
                    self._gso = False
                    continue  # this run again, a datagram at a time
                # otherwise lost, as on a network: the protocol resends
            position = end
        return count

    def _send_run(self, run: Sequence[bytes], address: Address) -> None:
        """One sendmsg for the whole run; the kernel cuts it at the first datagram's size."""
        segment = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(len(run[0])))]
        self.sock.sendmsg(run, segment, 0, address)


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def bind_udp(port: int) -> socket.socket:
    """A UDP socket on ``port`` of every address, its buffers as large as the kernel allows
    up to SOCKET_BUFFER. Raises ``OSError`` when the port cannot be bound."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            udp.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)  # the kernel caps it silently
        except OSError:
            pass
    try:
        udp.bind(("0.0.0.0", port))
    except OSError:
        udp.close()
        raise
    return udp


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter
KEEP_FREED_MEMORY = 32 * 1024 * 1024


def keep_freed_memory() -> None:
    """Let glibc keep up to 32 MiB of freed heap instead of returning it to the kernel at once.

    Every datagram received is an object of its own (the engine keeps views into it until
    its bytes are written), up to 64 KiB, freed a turn later. By default glibc gives freed
    memory above 128 KiB at the top of the heap back to the kernel, so the next turn's
    datagrams fault every page in again: measured here, that tripled the cost of receiving
    a 64 KiB datagram (47 us against 16 us) and was a page fault per 4 KiB of every file
    received. Nothing happens where there is no glibc.
    """
    try:
        ctypes.CDLL(None).mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MEMORY)
    except (OSError, AttributeError):
        pass
