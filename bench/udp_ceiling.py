"""The transfer ceiling: a raw UDP blast on loopback, no protocol at all.

    python3 -m bench.udp_ceiling [--bytes N] [--datagram SIZE] [--loss P]

One process sends ``bytes`` bytes in datagrams of ``datagram`` bytes as fast as ``sendto``
goes; another receives into a preallocated buffer and counts. Nothing is acknowledged or
resent, so the blast loses whatever the receiver's socket buffer cannot hold: the rate the
receiver *took in* is the ceiling any reliable transfer over the same datagrams can reach on
this machine, and is reported beside the sender's rate and the loss. ``--loss`` drops that
fraction of datagrams at the sender (they are not sent), for comparison with a lossy
transfer run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import socket
import sys
import time

RCVBUF = 8 * 1024 * 1024  # asked for; the kernel caps it at net.core.rmem_max
END = b"END"
IDLE = 0.5  # the receiver stops this long after the last datagram


def _receiver(pipe, datagram: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind(("127.0.0.1", 0))
    pipe.send((sock.getsockname()[1], sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
    buffer = bytearray(max(datagram, 65536))
    view = memoryview(buffer)
    received = datagrams = 0
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
            datagrams += 1
            last = time.perf_counter()
            n = recv_into(view)
    except socket.timeout:
        pass
    pipe.send({"received": received, "datagrams": datagrams, "seconds": last - first})
    sock.close()


def blast(total: int, datagram: int, loss: float = 0.0) -> dict:
    """Blast ``total`` bytes in ``datagram``-byte datagrams; rates in MB/s (10^6 bytes/s)."""
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_receiver, args=(theirs, datagram), daemon=True)
    process.start()
    port, rcvbuf = ours.recv()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    payload = bytes(random.getrandbits(8) for _ in range(min(datagram, 256))) * (datagram // 256 + 1)
    payload = payload[:datagram]
    count = max(1, total // datagram)
    send = sock.send
    drop = random.Random(1).random if loss else None
    sent = 0
    start = time.perf_counter()
    for _ in range(count):
        if drop is not None and drop() < loss:
            continue
        try:
            send(payload)
            sent += 1
        except (BlockingIOError, OSError):  # ENOBUFS: the datagram is lost, as on the wire
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
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.udp_ceiling", description="Raw UDP blast on loopback.")
    parser.add_argument("--bytes", type=int, default=100 * 1024 * 1024)
    parser.add_argument("--datagram", type=int, default=1400)
    parser.add_argument("--loss", type=float, default=0.0)
    args = parser.parse_args(argv)
    print(json.dumps(blast(args.bytes, args.datagram, args.loss), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
