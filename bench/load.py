"""Load-generating processes: each multiplexes many client connections with ``selectors``.

A coordinator (``bench.scenarios``) starts several ``Worker`` processes, each owning a slice
of the accounts, and drives them through a pipe: the worker logs its clients in, says
``ready``, then runs one command at a time (``relay``, ``latency``, ...) and answers with its
measurements. All workers share CLOCK_MONOTONIC, so the coordinator hands them absolute start
and stop times and they need no other synchronisation.

Each worker speaks one server's protocol (``bench.wire``: TESSENGER, or Redis for the
anchors), with the same payloads. The hot loops do not parse: the relay and the group
fan-out count deliveries with ``wire.Counter``, and senders keep a bounded number of
messages in flight, known locally because each sender's receiver (in the group: the member
served last) lives in the same worker.
"""

from __future__ import annotations

import errno
import multiprocessing
import selectors
import socket
import struct
import time
import traceback
from typing import Any

from shell import tls

from .common import HOST, LOGOUT, check_user_frame, login_frame, raise_nofile, user
from .wire import WIRES, Counter

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
RECV = 256 * 1024
LINGER_ABORT = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left on the loopback's ports


class BenchError(Exception):
    pass


class Client:
    """One connection of the load generator."""

    __slots__ = ("index", "sock", "buf", "out", "events", "state", "partner", "sent", "delivered",
                 "counter", "replies", "t_start", "t_welcome", "t_done")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.buf = bytearray()  # parsed input (set-up and latency paths)
        self.out = bytearray()
        self.events = 0
        self.state = "new"
        self.partner: "Client | None" = None  # the receiver of this sender (relay)
        self.sent = 0
        self.delivered = 0
        self.counter: Counter | None = None  # what the hot loops count in this client's input
        self.replies = 0  # Redis: integer replies so far
        self.t_start = 0.0
        self.t_welcome = 0.0
        self.t_done = 0.0


class Fleet:
    """A worker's clients and its selector."""

    def __init__(self, port: int, indices: list[int], wire: str = "tessenger", tls_ca: str | None = None) -> None:
        self.port = port
        self.wire = WIRES[wire]
        self.tls = tls.client_context(tls_ca) if tls_ca else None  # None: plain TCP
        self.selector = selectors.DefaultSelector()
        self.clients = [Client(i) for i in indices]
        self.by_index = {c.index: c for c in self.clients}

    # --- helpers -----------------------------------------------------------------------

    def watch(self, c: Client, events: int) -> None:
        if events == c.events:
            return
        if c.events == 0:
            self.selector.register(c.sock, events, c)
        elif events == 0:
            self.selector.unregister(c.sock)
        else:
            self.selector.modify(c.sock, events, c)
        c.events = events

    def send(self, c: Client, data: bytes) -> None:
        """Queue ``data`` and write what the socket takes now."""
        out = c.out
        if out:
            out += data
            return  # already waiting for writability
        try:
            sent = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            out += data[sent:]
            self.watch(c, READ | WRITE)

    def flush(self, c: Client) -> None:
        out = c.out
        if out:
            try:
                sent = c.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            del out[:sent]
        if not out:
            self.watch(c, READ)

    def read_frames(self, c: Client) -> list[dict]:
        return self.receive(c)[1]

    def receive(self, c: Client) -> tuple[int, list[dict]]:
        """One read: its arrival time (taken before any parsing) and the messages it completed."""
        try:
            data = c.sock.recv(RECV)
        except BlockingIOError:  # TLS: readable, but no whole record yet
            return time.monotonic_ns(), []
        arrived = time.monotonic_ns()
        if not data:
            raise BenchError(f"server closed {user(c.index)} (state {c.state})")
        c.buf += data
        return arrived, self.wire.parse(c, c.buf)

    # --- connecting and logging in ---------------------------------------------------

    def login_all(self, clients: list[Client] | None = None, *, check_user: bool = False, logout: bool = False,
                  window: int = 256, timeout: float = 120.0) -> None:
        """Connect and log in ``clients`` (all by default), at most ``window`` at a time.

        With ``check_user`` each does what client.py does (check_user, then login); with
        ``logout`` each logs out again after its welcome and waits for the server's close.
        Timestamps of each step are kept on the clients.
        """
        todo = list(reversed(clients if clients is not None else self.clients))
        busy = 0
        finished = 0
        total = len(todo)
        deadline = time.monotonic() + timeout
        selector = self.selector
        while finished < total:
            while todo and busy < window:
                c = todo.pop()
                self._start_connect(c, check_user)
                busy += 1
            if time.monotonic() > deadline:
                raise BenchError(f"login timed out: {finished} of {total} done")
            for key, mask in selector.select(1.0):
                c = key.data
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"connect failed for {user(c.index)}: {errno.errorcode.get(err, err)}")
                    c.state = "check" if check_user else "login"
                    self.watch(c, READ)
                    self.send(c, check_user_frame(c.index) if check_user else self.wire.hello(c.index))
                    continue
                if mask & WRITE:
                    self.flush(c)
                if not mask & READ:
                    continue
                if c.state in ("bye", "closing"):
                    try:
                        data = c.sock.recv(RECV)
                    except ConnectionResetError:
                        data = b""
                    c.buf += data
                    for message in self.wire.parse(c, c.buf):
                        if message["type"] != "bye":
                            raise BenchError(f"{user(c.index)} expected bye, got {message}")
                        c.state = "closing"  # the server closes after its bye
                    if not data:
                        if c.state != "closing":
                            raise BenchError(f"{user(c.index)} closed without bye")
                        c.t_done = time.monotonic()
                        self.watch(c, 0)
                        c.sock.close()
                        c.sock = None
                        c.state = "done"
                        busy -= 1
                        finished += 1
                    continue
                for message in self.read_frames(c):
                    kind = message["type"]
                    if c.state == "check" and kind == "user_ok":
                        c.state = "login"
                        self.send(c, login_frame(c.index))
                    elif c.state == "login" and kind == "welcome":
                        c.t_welcome = time.monotonic()
                        if logout:
                            c.state = "bye"
                            self.send(c, LOGOUT)
                        else:
                            c.state = "in"
                            busy -= 1
                            finished += 1
                    elif kind != "hello":  # Redis's answer to HELLO comes before the welcome
                        raise BenchError(f"{user(c.index)} in state {c.state} got {message}")

    def _start_connect(self, c: Client, check_user: bool) -> None:
        if self.tls is not None:
            self._connect_tls(c, check_user)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock = sock
        c.events = 0
        c.state = "connecting"
        c.t_start = time.monotonic()
        # ``port`` may map each client to its own port: the cluster bench places clients on nodes
        err = sock.connect_ex((HOST, self.port if isinstance(self.port, int) else self.port[c.index]))
        if err not in (0, errno.EINPROGRESS):
            raise BenchError(f"connect failed for {user(c.index)}: {errno.errorcode.get(err, err)}")
        self.watch(c, WRITE)

    def _connect_tls(self, c: Client, check_user: bool) -> None:
        """Connect and do the handshake blocking, as client.py does (set-up is not measured),
        then go on as a connected plain client."""
        c.t_start = time.monotonic()
        sock = socket.create_connection((HOST, self.port), timeout=30.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock = tls.TLSTransport(self.tls.wrap_socket(sock, server_hostname=HOST))
        c.sock.setblocking(False)
        c.events = 0
        c.state = "check" if check_user else "login"
        self.watch(c, READ)
        self.send(c, check_user_frame(c.index) if check_user else self.wire.hello(c.index))

    def close_all(self) -> None:
        for c in self.clients:
            if c.sock is not None:
                if c.events:
                    self.selector.unregister(c.sock)
                    c.events = 0
                try:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
                except (OSError, AttributeError):  # AttributeError: a TLS transport, closed as it is
                    pass
                c.sock.close()
                c.sock = None
        self.selector.close()

    def drain(self, seconds: float) -> None:
        """Read and discard whatever arrives for ``seconds`` (e.g. group invitations)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            for key, mask in self.selector.select(left):
                c = key.data
                if mask & WRITE:
                    self.flush(c)
                if mask & READ:
                    self.read_frames(c)


# --- the commands a worker runs ----------------------------------------------------------

def wait_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


class Worker:
    """One load process. ``params``: port, indices, and what the scenario needs."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        raise_nofile(len(params["indices"]) + 256)
        self.fleet = Fleet(params["port"], params["indices"], params.get("wire", "tessenger"), params.get("tls_ca"))

    # set-up -----------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        if self.params.get("login", True):
            self.fleet.login_all(window=self.params.get("window", 256))
        return {"clients": len(self.fleet.clients)}

    # relay: senders paired with receivers, bounded in flight -----------------------------

    def relay(self, start: float, mark: float, end: float, window: int, text: str) -> dict[str, Any]:
        """Pairs (2k -> 2k+1) pipeline ``window`` messages each; count deliveries in [mark, end)."""
        fleet = self.fleet
        wire = fleet.wire
        by_index = fleet.by_index
        senders = []
        for c in fleet.clients:
            c.counter = Counter(wire.DELIVERY if c.index % 2 else wire.ACK)
            if c.index % 2 == 0:
                c.partner = by_index[c.index + 1]
                c.partner.partner = c
                senders.append(c)
        batches = {c.index: wire.msgto(c.index, c.partner.index, text) for c in senders}
        low = window // 2
        select = fleet.selector.select
        send = fleet.send
        flush = fleet.flush
        delivered = 0
        mark_count = mark_time = None
        wait_until(start)
        for c in senders:
            send(c, batches[c.index] * window)
            c.sent += window
        while True:
            t = time.monotonic()
            if mark_count is None and t >= mark:
                mark_count, mark_time = delivered, t
            if t >= end:
                break
            for key, mask in select(0.05):
                c = key.data
                if mask & READ:
                    try:
                        data = c.sock.recv(RECV)
                    except BlockingIOError:  # TLS: readable, but no whole record yet
                        continue
                    if not data:
                        raise BenchError(f"server closed {user(c.index)}")
                    n = c.counter.feed(data)
                    if c.index % 2:  # a receiver: its sender may send more
                        delivered += n
                        s = c.partner
                        s.delivered += n
                        in_flight = s.sent - s.delivered
                        if in_flight <= low:
                            more = window - in_flight
                            s.sent += more
                            send(s, batches[s.index] * more)
                if mask & WRITE:
                    flush(c)
        acks = sum(c.counter.total for c in senders) // wire.acks_per_message
        return {"delivered": delivered - mark_count, "seconds": t - mark_time, "acks": acks,
                "sent": sum(c.sent for c in senders), "total_delivered": delivered}

    # latency: a fixed offered rate, timestamps in the text ---------------------------------

    def latency(self, start: float, mark: float, end: float, rate: float, drain: float = 1.0) -> dict[str, Any]:
        """Send ``rate`` messages/s round robin over the clients (each to index ^ 1); latencies of
        messages sent in [mark, end) in microseconds."""
        fleet = self.fleet
        wire = fleet.wire
        clients = fleet.clients
        n = len(clients)
        around = [wire.msgto_prefix(c.index, c.index ^ 1) for c in clients]
        framed = wire.framed
        select = fleet.selector.select
        send = fleet.send
        flush = fleet.flush
        mark_ns = int(mark * 1e9)
        end_ns = int(end * 1e9)
        samples: list[int] = []
        sent = 0
        received = 0
        acks = 0
        errors: list[str] = []
        stop = end + drain
        wait_until(start)
        t0 = start
        while True:
            t = time.monotonic()
            if t >= stop:
                break
            if t < end:
                due = int((t - t0) * rate) - sent
                for _ in range(due):
                    i = sent % n
                    prefix, suffix = around[i]
                    send(clients[i], framed(prefix, f"lat {time.monotonic_ns()} {sent}".encode(), suffix))
                    sent += 1
                timeout = max(0.0, min(t0 + (sent + 1) / rate, end) - time.monotonic())
            else:
                timeout = stop - t
            for key, mask in select(timeout):
                c = key.data
                if mask & READ:
                    arrived, messages = fleet.receive(c)
                    for message in messages:
                        kind = message["type"]
                        if kind == "msg_sent":
                            acks += 1
                        elif kind == "message":
                            received += 1
                            stamp = int(message["text"].split()[1])
                            if mark_ns <= stamp < end_ns:
                                samples.append(arrived - stamp)
                        else:
                            errors.append(str(message)[:200])
                if mask & WRITE:
                    flush(c)
        return {"samples_us": [s // 1000 for s in samples], "sent": sent, "received": received, "acks": acks,
                "errors": errors[:5], "seconds": end - start}

    # sessions: hold the logged-in clients idle -----------------------------------------------

    def idle(self, seconds: float) -> dict[str, Any]:
        """Stay connected, reading anything that comes, for ``seconds``."""
        self.fleet.drain(seconds)
        return {"logged_in": sum(c.state == "in" for c in self.fleet.clients)}

    # login: full login/logout cycles -----------------------------------------------------------

    def login_cycle(self, start: float, window: int) -> dict[str, Any]:
        wait_until(start)
        t = time.monotonic()
        self.fleet.login_all(check_user=True, logout=True, window=window)
        clients = self.fleet.clients
        return {"cycles": sum(c.state == "done" for c in clients), "start": t,
                "last_welcome": max(c.t_welcome for c in clients), "last_done": max(c.t_done for c in clients),
                "login_ms": sorted((c.t_welcome - c.t_start) * 1000 for c in clients)}

    # group fan-out ---------------------------------------------------------------------------

    def create_group(self, creator: int, group: str, members: list[int]) -> dict[str, Any]:
        c = self.fleet.by_index[creator]
        request = self.fleet.wire.create_group(group, members)
        if not request:
            return {"members": len(members) + 1}
        self.fleet.send(c, request)
        reply = self._reply(c, "group_created")
        return {"members": len(reply["members"])}

    def join_group(self, group: str, members: list[int]) -> dict[str, Any]:
        """The ``members`` that are ours join, in that order."""
        joiners = [self.fleet.by_index[m] for m in members if m in self.fleet.by_index]
        for c in joiners:
            self.fleet.send(c, self.fleet.wire.join_group(group))
        for c in joiners:
            self._reply(c, "group_joined", ignore=("group_invite",))
        return {"joined": len(joiners)}

    def _reply(self, c: Client, kind: str, ignore: tuple[str, ...] = (), timeout: float = 30.0) -> dict:
        """Wait for ``c``'s next message of type ``kind`` (other clients' input is kept)."""
        deadline = time.monotonic() + timeout
        parse = self.fleet.wire.parse
        while True:
            for message in parse(c, c.buf):
                if message["type"] == kind:
                    return message
                if message["type"] not in ignore:
                    raise BenchError(f"{user(c.index)} expected {kind}, got {message}")
            if time.monotonic() > deadline:
                raise BenchError(f"{user(c.index)}: no {kind}")
            for key, mask in self.fleet.selector.select(1.0):
                other = key.data
                if mask & WRITE:
                    self.fleet.flush(other)
                if mask & READ:
                    data = other.sock.recv(RECV)
                    if not data:
                        raise BenchError(f"server closed {user(other.index)}")
                    other.buf += data

    def group_fanout(self, start: float, mark: float, end: float, group: str, sender: int, gate: int, window: int,
                     text: str, quiet: float = 0.5) -> dict[str, Any]:
        """Sustained fan-out: if ``sender`` is ours it keeps ``window`` messages in flight,
        counted from what reached ``gate`` (the member served last); every member here counts
        its deliveries. Deliveries in [mark, end) make the rate; after ``end`` nothing more is
        posted and each worker reads until its members have been quiet for ``quiet`` seconds,
        so the totals can be checked against what was posted."""
        fleet = self.fleet
        wire = fleet.wire
        select = fleet.selector.select
        s = fleet.by_index.get(sender)
        g = fleet.by_index.get(gate)
        for c in fleet.clients:
            c.counter = Counter(wire.ACK if c is s else wire.GROUP_DELIVERY)
        message = wire.groupmsg(group, text)
        delivered = 0
        mark_count = mark_time = None
        end_count, end_time = 0, mark
        wait_until(start)
        if s is not None:
            fleet.send(s, message * window)
            s.sent = window
        last_input = time.monotonic()
        while True:
            t = time.monotonic()
            if mark_count is None and t >= mark:
                mark_count, mark_time = delivered, t
            if t >= end and (t - last_input > quiet or t > end + 30):
                break
            for key, mask in select(0.05):
                c = key.data
                if mask & READ:
                    data = c.sock.recv(RECV)
                    if not data:
                        raise BenchError(f"server closed {user(c.index)}")
                    last_input = time.monotonic()
                    n = c.counter.feed(data)
                    if c is s:
                        continue
                    delivered += n
                    if t < end:
                        end_count, end_time = delivered, t
                    if c is g and s is not None and t < end:
                        more = window - (s.sent - g.counter.total)
                        if more > 0:
                            s.sent += more
                            fleet.send(s, message * more)
                if mask & WRITE:
                    fleet.flush(c)
        return {"delivered": end_count - mark_count, "seconds": end_time - mark_time, "total_delivered": delivered,
                "posted": s.sent if s is not None else 0, "members": sum(c is not s for c in fleet.clients)}

    def close(self) -> None:
        self.fleet.close_all()


def worker_main(pipe, params: dict[str, Any]) -> None:
    """Entry point of a load process: set up, then run the coordinator's commands in turn."""
    worker = None
    try:
        worker = Worker(params)
        pipe.send(("ok", worker.setup()))
        while True:
            command, arguments = pipe.recv()
            if command == "close":
                break
            pipe.send(("ok", getattr(worker, command)(**arguments)))
    except BaseException:  # report it: the coordinator is waiting for an answer
        try:
            pipe.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if worker is not None:
            worker.close()
        pipe.close()


class Workers:
    """The coordinator's handle on a set of load processes."""

    def __init__(self, port: int, slices: list[list[int]], timeout: float = 180.0, **params: Any) -> None:
        context = multiprocessing.get_context("fork")
        self.timeout = timeout
        self.pipes = []
        self.processes = []
        for indices in slices:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, {"port": port, "indices": indices, **params}),
                                      daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)
        try:
            self.setup = self.gather()
        except BaseException:
            self.close()
            raise

    def gather(self, pipes=None) -> list[dict[str, Any]]:
        results = []
        for pipe in pipes if pipes is not None else self.pipes:
            if not pipe.poll(self.timeout):
                raise BenchError("a load process did not answer in time")
            status, value = pipe.recv()
            if status != "ok":
                raise BenchError(f"load process failed:\n{value}")
            results.append(value)
        return results

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def start(self, command: str, **arguments: Any) -> None:
        """Have every worker start ``command``; ``gather`` collects their answers."""
        for pipe in self.pipes:
            pipe.send((command, arguments))

    def run(self, command: str, **arguments: Any) -> list[dict[str, Any]]:
        """Run ``command`` on every worker at once; their answers in worker order."""
        self.start(command, **arguments)
        return self.gather()

    def run_on(self, which: int, command: str, **arguments: Any) -> dict[str, Any]:
        self.pipes[which].send((command, arguments))
        return self.gather([self.pipes[which]])[0]

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close", {}))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join()
        for pipe in self.pipes:
            pipe.close()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split(indices: list[int], parts: int, even: bool = False) -> list[list[int]]:
    """Cut ``indices`` into ``parts`` contiguous slices (of even length when ``even``, so the
    pairs 2k, 2k+1 stay together)."""
    parts = max(1, min(parts, len(indices)))
    unit = 2 if even else 1
    units = len(indices) // unit
    slices = []
    start = 0
    for p in range(parts):
        size = (units // parts + (1 if p < units % parts else 0)) * unit
        slices.append(indices[start:start + size])
        start += size
    slices[-1] += indices[start:]
    return [s for s in slices if s]
