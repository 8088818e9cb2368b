"""Linux's UDP offloads for the transfers: which datagrams may share one system call.

On Linux one ``sendmsg`` can carry a run of datagrams that the kernel cuts into datagrams of
a given size (UDP GSO), and one read can return such a run coalesced (UDP GRO), so a
transfer of small datagrams costs a system call per run instead of per datagram. The
datagrams on the wire are the same. These are the pure rules; ``shell/datagrams.py``'s
``DatagramPort`` does the socket calls.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Sequence

# Linux's UDP offloads (<linux/udp.h>; Python names neither). Sending: one sendmsg carries a
# run of datagrams and the kernel cuts it into datagrams of the size given (UDP_SEGMENT,
# Linux 4.18). Receiving: the kernel may hand over such a run in one read, with the size to
# cut it at (UDP_GRO, Linux 5.0); on loopback a run arrives whole.
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS: 64 in older kernels (128 in this one)
# One run must fit one 64 KiB packet: 65,493 bytes at most arrive as one read on loopback
# (measured: 65,535 less Ethernet, IP and UDP headers); a longer run still arrives, but as
# separate datagrams. 46 datagrams of 1,400 bytes, 44 of 1,472.
GSO_MAX_BYTES = 65_000
READ_SIZE = 65_535  # a datagram or a coalesced run, whole
# A run refused with one of these: this socket or path cannot segment (an MTU below the
# segment size, no checksum offload, no UDP_SEGMENT): send one datagram per call instead.
NO_GSO = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE})


def gso_run_end(datagrams: Sequence[bytes], start: int, max_segments: int = GSO_MAX_SEGMENTS,
                max_bytes: int = GSO_MAX_BYTES) -> int:
    """Where the run starting at ``start`` that one UDP_SEGMENT sendmsg may carry ends.

    The receiving kernel cuts a run at the size of its first datagram, so a run is datagrams
    of that size and at most one shorter, non-empty one at the end (a file's short last
    chunk, or the FIN after it); never a longer one, which would come out cut in two. At most
    ``max_segments`` datagrams and ``max_bytes`` bytes; always at least one datagram.
    """
    size = len(datagrams[start])
    if not size:
        return start + 1  # a segment size of 0 means nothing to the kernel
    count = len(datagrams)
    end = start + 1
    limit = min(count, start + max_segments, start + max_bytes // size)  # equal ones: just compare
    while end < limit and len(datagrams[end]) == size:
        end += 1
    if end < count and end - start < max_segments:
        last = len(datagrams[end])
        if 0 < last < size and (end - start) * size + last <= max_bytes:  # (an empty one would vanish)
            end += 1
    return end


def gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The size a coalesced read is to be cut at, from ``recvmsg``'s ancillary data; 0 if
    the read is one datagram."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return int.from_bytes(value[:4], sys.byteorder)
    return 0
