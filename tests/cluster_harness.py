"""Helpers for the cluster tests: a real redis-server on a free loopback port, and a cluster of
real server.py nodes that share it and one data directory.

``Cluster`` offers what ``ServerProcess`` offers, so the behaviour tests of one server run
unchanged against it: ``port`` and ``connect()`` go to the nodes in turn (clients spread over
the nodes), ``output`` is every node's console lines merged, ``log()`` reads the shared logs.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from itertools import cycle
from pathlib import Path

import pytest

from tests.harness import CREDENTIALS, ROOT, TIMEOUT, LineReader, ServerProcess, WireClient, wait_for

REDIS_SERVER = shutil.which("redis-server")
try:
    import hiredis  # noqa: F401
    HIREDIS = True
except ImportError:
    HIREDIS = False


def require_redis() -> None:
    """Skip, visibly, where the cluster cannot run."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; `make test` does it as root)")
    if not HIREDIS:
        pytest.skip("hiredis is not installed (pip install -r requirements-test.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """redis-server on loopback with its AOF fsynced per write, in ``directory``."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, what="redis-server to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def call(self, *words: str) -> bytes:
        """One inline command; its raw reply (enough for FLUSHALL and the like)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                assert sock.recv(16) == b"+OK\r\n"
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(65536)

    def stop(self) -> None:
        """A clean stop (SIGTERM): Redis writes its AOF out, as a restart by an operator would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Node(ServerProcess):
    """One server.py node; its console lines go to the cluster's merged output."""

    def __init__(self, cluster: "Cluster", *flags: str, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), str(port), str(cluster.attempts), "--host", "127.0.0.1",
             "--data-dir", str(cluster.data_dir), "--redis", cluster.redis.url, *cluster.flags, *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        first = self.process.stdout.readline()
        found = re.search(r"TESSENGER server listening on .*:(\d+) ", first)
        if not found:
            self.process.kill()
            raise AssertionError(f"the node did not start: {first!r}")
        self.port = int(found.group(1))
        cluster.output.follow(self.process.stdout)


class MergedLines(LineReader):
    """A LineReader over the console lines of several processes (each line whole)."""

    def __init__(self) -> None:
        self.lines = []
        self._queue = queue.Queue()
        self.closed = False

    def follow(self, stream) -> None:
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put(line.rstrip("\n"))


class Cluster:
    """``size`` nodes sharing ``redis`` (flushed first) and one data directory."""

    def __init__(self, redis: RedisServer, data_dir: Path, size: int = 3, attempts: int = 3, *flags: str) -> None:
        redis.call("FLUSHALL")
        self.redis = redis
        self.data_dir = data_dir
        self.attempts = attempts
        self.flags = flags
        data_dir.mkdir(parents=True, exist_ok=True)
        if not (data_dir / "credentials.txt").exists():
            shutil.copy(CREDENTIALS, data_dir / "credentials.txt")
        self.output = MergedLines()
        self.nodes = [Node(self) for _ in range(size)]
        self._turns = cycle(range(size))

    @property
    def port(self) -> int:
        """A node's port, each time the next node's: clients spread over the nodes."""
        return self.nodes[next(self._turns)].port

    def connect(self, node: int | None = None) -> WireClient:
        port = self.port if node is None else self.nodes[node].port
        return WireClient(("127.0.0.1", port))

    def log(self, name: str) -> str:
        path = self.data_dir / name
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
