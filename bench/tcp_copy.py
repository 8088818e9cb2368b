"""The transfer's anchor (SPEC §8): a plain TCP copy of the same file by Python sockets.

    python3 -m bench.tcp_copy [--bytes N]

What a user would write instead of ``/p2pvideo``: one process reads the file in chunks,
hashes them and ``sendall``s them over a loopback TCP connection, then sends the SHA-256;
another process (the other "client") ``recv_into``s a preallocated buffer, writes each
chunk to its own file, hashes it, and compares the digest at the end, as the transfer's
receiver does. Timed from the sender's ``connect`` to the receiver having written and
checked the last byte (both processes read the same ``CLOCK_MONOTONIC``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 1 << 20  # bytes per read/sendall and per recv_into at most
HEADER = struct.Struct("!Q")  # the file's size, before its bytes; its SHA-256 follows them


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            raise ConnectionError("the sender closed the connection early")
        data += got
    return bytes(data)


def _receiver(listener: socket.socket, destination: Path, pipe) -> None:
    conn, _ = listener.accept()
    with conn, open(destination, "wb") as f:
        (size,) = HEADER.unpack(_recv_exactly(conn, HEADER.size))
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        left = size
        while left:
            n = conn.recv_into(view, min(CHUNK, left))
            if not n:
                raise ConnectionError("the sender closed the connection early")
            f.write(view[:n])
            digest.update(view[:n])
            left -= n
        identical = _recv_exactly(conn, digest.digest_size) == digest.digest()
    pipe.send({"bytes": size, "identical": identical, "finished": time.monotonic()})


def copy(source: Path, destination: Path) -> dict:
    """Copy ``source`` to ``destination`` over loopback TCP between two processes; MB/s = 10^6 bytes/s."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_receiver, args=(listener, destination, theirs), daemon=True)
    process.start()
    try:
        size = source.stat().st_size
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        started = time.monotonic()
        with socket.create_connection(listener.getsockname()) as sock, open(source, "rb") as f:
            sock.sendall(HEADER.pack(size))
            while n := f.readinto(buffer):
                digest.update(view[:n])
                sock.sendall(view[:n])
            sock.sendall(digest.digest())
            if not ours.poll(60 + size / 1e7):
                raise RuntimeError("the TCP copy's receiver did not finish")
            result = ours.recv()
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
        listener.close()
        ours.close()
    seconds = result["finished"] - started
    return {"bytes": result["bytes"], "seconds": seconds, "MBps": result["bytes"] / seconds / 1e6,
            "identical": result["identical"] and result["bytes"] == size}


def main(argv: list[str]) -> int:
    from .p2pvideo import make_file

    parser = argparse.ArgumentParser(prog="python3 -m bench.tcp_copy", description="A file over loopback TCP.")
    parser.add_argument("--bytes", type=int, default=100 * 1024 * 1024)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tessenger-tcp-copy-") as work:
        source = Path(work) / "video.bin"
        make_file(source, args.bytes)
        print(json.dumps(copy(source, Path(work) / "copy.bin"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
