"""Shared pieces of the benchmark: the server under test, accounts, wire helpers, statistics.

Everything here is standard library only. The load generators speak the wire protocol
directly (4-byte big-endian length + UTF-8 JSON, see PROTOCOL.md) instead of going through
``core`` so that what is measured is the server, not a second copy of its codec.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server.py"
CREDENTIALS = ROOT / "credentials.txt"
HOST = "127.0.0.1"
HEADER = struct.Struct("!I")
START_TIMEOUT = 20.0


# --- accounts --------------------------------------------------------------------------

def user(index: int) -> str:
    return f"user{index}"


def password(index: int) -> str:
    return f"pw{index}!x"


def make_data_dir(users: int, prefix: str = "tessenger-bench-", hashed: bool = False) -> Path:
    """A fresh data directory: the project's accounts plus user0..user{users-1}, whose
    passwords are stored in plain, or with ``hashed`` as the server's scrypt hash entries."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    lines = CREDENTIALS.read_text(encoding="utf-8").splitlines()
    if hashed:
        from core import passwords  # set-up only: the entries server.py --hash-password makes

        lines += [f"{user(i)} {passwords.hash_entry(password(i))}" for i in range(users)]
    else:
        lines += [f"{user(i)} {password(i)}" for i in range(users)]
    (directory / "credentials.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made as the Makefile makes one."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


# --- wire ------------------------------------------------------------------------------

def frame(obj: dict) -> bytes:
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


def login_frame(index: int, udp_port: int = 9) -> bytes:
    return frame({"type": "login", "username": user(index), "password": password(index), "udp_port": udp_port})


def check_user_frame(index: int) -> bytes:
    return frame({"type": "check_user", "username": user(index)})


LOGOUT = frame({"type": "logout"})


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted``; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --- processes -------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_seconds(pid: int) -> float:
    """CPU time used plus time spent runnable but waiting for a CPU, so far, by ``pid``'s
    main thread (/proc/PID/schedstat): what is left of the wall time was spent idle."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        running, waiting = f.read().split()[:2]
    return (int(running) + int(waiting)) / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used so far, summed over CPUs (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS  # all but idle and iowait


def stolen_ticks() -> tuple[int, int]:
    """(stolen, all) CPU ticks so far, summed over CPUs (/proc/stat): stolen ones are those in
    which a virtual machine's host ran something else while this machine had work to run."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values[7], sum(values)


def stolen_share(start: tuple[int, int], end: tuple[int, int]) -> float:
    """The share of the CPUs' time the host took between two ``stolen_ticks()``."""
    return (end[0] - start[0]) / max(1, end[1] - start[1])


# A process that was busy (running or waiting to run) this share of a window is saturated;
# one idle this share of it had time to spare.
SATURATED = 0.9
IDLE = 0.1


class CpuWindow:
    """CPU used over a window by the server, by the load processes, and by everything else;
    and whether the load side, not the server, was the bottleneck."""

    def __init__(self, server_pid: int, load_pids: list[int]) -> None:
        self.pids = [server_pid, *load_pids]
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, list[float], list[float]]:
        cpu, busy = [], []
        for pid in self.pids:
            try:
                cpu.append(cpu_seconds(pid))
                busy.append(busy_seconds(pid))
            except (OSError, ValueError):
                cpu.append(0.0)
                busy.append(0.0)
        return time.monotonic(), machine_busy_seconds(), cpu, busy

    def stop(self) -> dict[str, Any]:
        t1, machine1, cpu1, busy1 = self._sample()
        t0, machine0, cpu0, busy0 = self._start
        elapsed = t1 - t0
        cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1)]
        busy = [(b - a) / elapsed for a, b in zip(busy0, busy1)]
        server, load = cpu[0], sum(cpu[1:])
        others = max(0.0, (machine1 - machine0) / elapsed - server - load)
        # the server had time to spare while a load process could not go faster, or the whole
        # machine was taken (by the load and everyone else): the figure is the load side's,
        # and the server's own is higher
        saturated = max(busy[1:], default=0.0) >= SATURATED or server + load + others >= SATURATED * (os.cpu_count() or 1)
        load_bound = 1 - busy[0] >= IDLE and saturated
        return {"server_cpu": server, "load_cpu": load, "others_cpu": others, "server_busy": busy[0],
                "load_busy_max": max(busy[1:], default=0.0), "load_bound": load_bound}


class ServerProcess:
    """A server: the real server.py, or (with ``port``) a redis-server told its port.

    server.py's first stdout line must contain ``listening on HOST:PORT``; stdout after it is
    discarded unread (the server runs with ``--quiet``), stderr goes to a file. A server
    given ``port`` is ready when it answers PING there.
    """

    def __init__(self, command: list[str], data_dir: Path, name: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.name = name
        self.stderr_path = data_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
        )
        self.pid = self.process.pid
        self.spy: subprocess.Popen | None = None  # a profiler attached from outside
        if port is not None:
            self.port = port
            if not self._answers_ping():
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.stderr()}")
            return
        first = self._first_line()
        match = re.search(r"listening on ([^:\s]+):(\d+)", first)
        if not match:
            self.stop()
            raise RuntimeError(f"{name} did not start: {first!r} {self.stderr()}")
        self.port = int(match.group(2))

    def _first_line(self) -> str:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                return ""
        return self.process.stdout.readline()

    def _answers_ping(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.alive():
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    @classmethod
    def tessenger(cls, data_dir: Path, profile: Path | None = None, extra: list[str] | None = None) -> "ServerProcess":
        """server.py; with ``profile``, under the profiler chosen in ``bench.profiling``."""
        from . import profiling

        command = [sys.executable]
        if profile is not None:
            command += profiling.server_prefix(profile)
        command += [str(SERVER), "0", "3", "--host", HOST, "--data-dir", str(data_dir), "--quiet",
                    # the load comes from one address, as fast as it can: no flood control, no per-address limits
                    "--flood-rate", "0", "--per-address", "0", "--per-address-waiting", "0", "--per-address-rate", "0",
                    *(extra or [])]
        server = cls(command, data_dir, "server")
        if profile is not None:
            server.spy = profiling.attach(server.pid, profile)
        return server

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (the server's clean stop, which also lets cProfile write its file)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.spy is not None:
            try:
                self.spy.wait(timeout=30)  # py-spy writes its file when the server has gone
            except subprocess.TimeoutExpired:
                self.spy.kill()
                self.spy.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._stderr.close()


def cleanup(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


# --- statistics ------------------------------------------------------------------------

def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def now() -> float:
    """The clock every process of the benchmark shares (CLOCK_MONOTONIC is system-wide)."""
    return time.monotonic()
