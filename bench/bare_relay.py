"""The relay ceiling: a bare selectors relay with the server's I/O shape and none of its work.

    python3 -m bench.bare_relay [--host 127.0.0.1] [--port 0]

It speaks just enough of the wire protocol for the benchmark's clients to log in: the first
frame of a connection is read as JSON (``login`` -> ``welcome``, ``check_user`` -> ``user_ok``)
to learn the username ``userN``; from then on every whole frame is forwarded untouched to the
fixed partner ``user(N xor 1)``, split by its length header only: no JSON, no validation, no
acknowledgement, no log. Like server.py it is one thread, non-blocking sockets, an output
buffer per connection, reads of at most 64 KiB per connection per turn, writes at once and
waits for writability only while output is pending. What the real server does beyond this is
exactly what the ratio relay/bare measures.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import struct
import sys

from .common import raise_nofile

READ_CHUNK = 64 * 1024
HEADER = struct.Struct("!I")
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


def _frame(obj: dict) -> bytes:
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


class Conn:
    __slots__ = ("sock", "name", "partner_name", "partner", "inbuf", "out", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.name: str | None = None
        self.partner_name = ""
        self.partner: Conn | None = None
        self.inbuf = bytearray()
        self.out = bytearray()
        self.events = READ


class BareRelay:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, READ, None)
        self.by_name: dict[str, Conn] = {}

    def serve_forever(self) -> None:
        select = self.selector.select
        while True:
            dirty: list[Conn] = []
            for key, mask in select():
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                if mask & WRITE:
                    self._write(conn)
                if mask & READ:
                    target = self._read(conn)
                    if target is not None:
                        dirty.append(target)
            for conn in dirty:  # write the turn's output at once, like server.py
                if conn.out:
                    self._write(conn)

    def _accept(self) -> None:
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.selector.register(sock, READ, conn)

    def _read(self, conn: Conn) -> Conn | None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return None
        buf = conn.inbuf
        buf += data
        if conn.name is None:
            return self._handshake(conn)
        # find the end of the last whole frame: framing only, nothing parsed
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - pos >= 4:
            step = 4 + unpack(buf, pos)[0]
            if pos + step > end:
                break
            pos += step
        if not pos:
            return None
        partner = conn.partner
        if partner is None:
            partner = conn.partner = self.by_name.get(conn.partner_name)
        if partner is not None:
            partner.out += buf[:pos]
        del buf[:pos]
        return partner

    def _handshake(self, conn: Conn) -> Conn | None:
        buf = conn.inbuf
        while conn.name is None and len(buf) >= 4:
            (length,) = HEADER.unpack_from(buf, 0)
            if len(buf) < 4 + length:
                return None
            message = json.loads(bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            if message.get("type") == "check_user":
                conn.out += _frame({"type": "user_ok"})
                continue
            name = message["username"]
            conn.name = name
            stem = name.rstrip("0123456789")
            conn.partner_name = f"{stem}{int(name[len(stem):]) ^ 1}"
            self.by_name[name] = conn
            conn.out += _frame({"type": "welcome", "username": name})
        return conn

    def _write(self, conn: Conn) -> None:
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                out.clear()
                sent = 0
            del out[:sent]
        events = READ | (WRITE if out else 0)
        if events != conn.events and conn.sock.fileno() >= 0:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _drop(self, conn: Conn) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        if conn.name is not None and self.by_name.get(conn.name) is conn:
            del self.by_name[conn.name]
        partner = self.by_name.get(conn.partner_name)
        if partner is not None and partner.partner is conn:
            partner.partner = None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.bare_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_nofile(20_000)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    listener.setblocking(False)
    host, port = listener.getsockname()
    print(f"bare relay listening on {host}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        BareRelay(listener).serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
