"""The transfer ceiling: a raw UDP blast on loopback, no protocol at all.

    python3 -m bench.udp_ceiling [--bytes N] [--datagram SIZE] [--loss P] [--no-offload]

One process sends ``bytes`` bytes in datagrams of ``datagram`` bytes as fast as the socket
goes; another receives into a preallocated buffer and counts. Nothing is acknowledged or
resent, so the blast loses whatever the receiver's socket buffer cannot hold: the rate the
receiver *took in* is the ceiling any reliable transfer over the same datagrams can reach on
this machine, and is reported beside the sender's rate and the loss. ``--loss`` drops that
fraction of datagrams at the sender (they are not sent), for comparison with a lossy
transfer run.

The blast moves datagrams the way the client does (``shell.datagrams.DatagramPort``): on
Linux, runs of them per system call (UDP GSO to send, GRO to receive), so that it stays a
ceiling for the client; ``--no-offload`` sends and receives one datagram per call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.udp_batching import GSO_MAX_BYTES, SOL_UDP, UDP_GRO, UDP_SEGMENT, gso_run_end

RCVBUF = 8 * 1024 * 1024  # asked for; the kernel caps it at net.core.rmem_max
END = b"END"
IDLE = 0.5  # the receiver stops this long after the last datagram


def _receiver(pipe, offload: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if offload:  # a run of datagrams in one read: recv_into then takes in all of it
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    sock.bind(("127.0.0.1", 0))
    pipe.send((sock.getsockname()[1], sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
    buffer = bytearray(65536)
    view = memoryview(buffer)
    received = reads = 0
    first = last = 0.0
    sock.settimeout(30.0)
    try:
        n = sock.recv_into(view)
        first = last = time.perf_counter()
        sock.settimeout(IDLE)
        recv_into = sock.recv_into
        while True:
            if n == 3 and view[:3] == END:
                break
            received += n
            reads += 1
            last = time.perf_counter()
            n = recv_into(view)
    except socket.timeout:
        pass
    pipe.send({"received": received, "reads": reads, "seconds": last - first})
    sock.close()


def _runs(count: int, payload: bytes, loss: float, offload: bool) -> list[int]:
    """How many datagrams each send carries: the ones not dropped, in the runs the client's
    ``DatagramPort`` would send them in (its own rule, ``gso_run_end``), or one each
    without offload."""
    drop = random.Random(1).random if loss else None
    kept = [payload for _ in range(count) if drop is None or drop() >= loss]
    if not offload:
        return [1] * len(kept)
    runs: list[int] = []
    start = 0
    while start < len(kept):
        end = gso_run_end(kept, start)
        runs.append(end - start)
        start = end
    return runs


def blast(total: int, datagram: int, loss: float = 0.0, offload: bool = True) -> dict:
    """Blast ``total`` bytes in ``datagram``-byte datagrams; rates in MB/s (10^6 bytes/s)."""
    offload = offload and sys.platform.startswith("linux") and datagram * 2 <= GSO_MAX_BYTES
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_receiver, args=(theirs, offload), daemon=True)
    process.start()
    port, rcvbuf = ours.recv()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    payload = bytes(random.getrandbits(8) for _ in range(min(datagram, 256))) * (datagram // 256 + 1)
    payload = payload[:datagram]
    count = max(1, total // datagram)
    runs = _runs(count, payload, loss, offload)  # decided before the clock starts
    segment = [(SOL_UDP, UDP_SEGMENT, datagram.to_bytes(2, sys.byteorder))]
    run_buffers = {n: [payload] * n for n in set(runs)}
    send, sendmsg = sock.send, sock.sendmsg
    sent = 0
    start = time.perf_counter()
    for n in runs:
        try:
            if n == 1:
                send(payload)
            else:
                sendmsg(run_buffers[n], segment)
            sent += n
        except (BlockingIOError, OSError):  # ENOBUFS: the datagrams are lost, as on the wire
            pass
    elapsed = time.perf_counter() - start
    for _ in range(5):  # several: an END can be lost like any datagram
        if ours.poll(0.002):
            break
        try:
            sock.send(END)
        except OSError:  # the receiver has stopped and the port refuses: it has its END
            break
    result = ours.recv()
    process.join(5)
    sock.close()
    ours.close()
    offered = count * datagram
    return {
        "datagram": datagram,
        "bytes": offered,
        "loss_injected": loss,
        "send_MBps": sent * datagram / elapsed / 1e6 if elapsed > 0 else float("nan"),
        "recv_MBps": result["received"] / result["seconds"] / 1e6 if result["seconds"] > 0 else float("nan"),
        "delivered_fraction": result["received"] / offered,
        "rcvbuf": rcvbuf,
        "offload": offload,  # runs of datagrams per system call (UDP GSO/GRO), as the client
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.udp_ceiling", description="Raw UDP blast on loopback.")
    parser.add_argument("--bytes", type=int, default=100 * 1024 * 1024)
    parser.add_argument("--datagram", type=int, default=1400)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--no-offload", dest="offload", action="store_false",
                        help="one datagram per system call (no UDP GSO/GRO)")
    args = parser.parse_args(argv)
    print(json.dumps(blast(args.bytes, args.datagram, args.loss, args.offload), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
