"""The /p2pvideo row: a file between two real clients, beside a raw UDP blast ceiling and,
for the default datagram, beside a plain TCP copy of the same file (SPEC §8's anchor).

The ceiling (``bench.udp_ceiling``) and the TCP copy (``bench.tcp_copy``) are measured in
every run. The transfer itself is measured by ``measure_transfer``: two real client.py
processes and a real server.py.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .common import ROOT
from .tcp_copy import copy as tcp_copy
from .udp_ceiling import blast

PLACEHOLDER = "not yet measured: awaiting client UDP transfer"
FALLBACK_DATAGRAM = 8192  # used for "the default datagram size" until core.transfer names its own
SMALL_DATAGRAM = 1400
TCP_COPIES = 3  # the anchor is the best of these: one copy takes a fraction of a second, easily disturbed


def default_datagram() -> tuple[int, str]:
    """The transfer's default datagram size, and where that number came from."""
    try:
        from core import transfer  # type: ignore[attr-defined]
    except ImportError:
        return FALLBACK_DATAGRAM, "bench fallback (core.transfer not present)"
    choose = getattr(transfer, "datagram_size_for", None)
    if callable(choose):
        try:
            return int(choose("127.0.0.1")), "core.transfer.datagram_size_for('127.0.0.1')"
        except Exception:  # an interface that changed: fall back to a constant
            pass
    for name in ("DEFAULT_DATAGRAM", "DEFAULT_DATAGRAM_SIZE", "DATAGRAM_SIZE", "DEFAULT_PAYLOAD", "MAX_PAYLOAD",
                 "CHUNK_SIZE", "DEFAULT_CHUNK"):
        value = getattr(transfer, name, None)
        if isinstance(value, int) and value > 0:
            return value, f"core.transfer.{name}"
    return FALLBACK_DATAGRAM, "bench fallback (no size constant found in core.transfer)"


@dataclass(frozen=True)
class TransferCase:
    name: str
    datagram: int | None  # None: the client's default
    loss: float
    target_MBps: float | None
    mac: bool = True  # False: both clients with --no-transfer-mac, for the cost of the MACs
    tcp_ratio: float | None = None  # target: at least this times the TCP copy's MB/s (SPEC §8)


@dataclass
class TransferResult:
    seconds: float  # from the /p2pvideo command to the audience's "Received FILENAME from ..."
    bytes: int
    identical: bool  # the saved file is byte-identical (SHA-256) to the original


def measure_transfer(work: Path, size: int, datagram: int | None, loss: float, mac: bool = True) -> TransferResult:
    """Send a ``size``-byte file from one real client.py to another through a real server.py.

    The server runs in ``work``; the presenter (Yoda) and the audience (Luke) are client.py
    processes in ``work/presenter`` and ``work/audience``, logged in over stdin, each with
    ``--datagram-size`` when ``datagram`` is not None. For ``loss`` > 0 each client is started
    with ``--simulate-loss`` and drops that fraction of the datagrams it sends (DATA one way,
    ACKs the other): a proxy in between cannot be used, since each side accepts datagrams
    only from the address the server announced. Timed from typing ``/p2pvideo Luke video.bin``
    to the audience printing ``Received video.bin from Yoda``; then the copy's SHA-256 is
    compared with the original's.
    """
    from .common import ServerProcess

    data_dir = work / "server"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "credentials.txt", data_dir / "credentials.txt")
    expected = make_file(work / "presenter" / "video.bin", size)
    (work / "audience").mkdir(parents=True, exist_ok=True)
    flags = [*(["--datagram-size", str(datagram)] if datagram else []),
             *(["--simulate-loss", str(loss)] if loss else []), *([] if mac else ["--no-transfer-mac"])]
    server = ServerProcess.tessenger(data_dir)
    clients: list[_Client] = []
    try:
        presenter = _Client(server.port, work / "presenter", flags)
        clients.append(presenter)
        audience = _Client(server.port, work / "audience", flags)
        clients.append(audience)
        presenter.login("Yoda")
        audience.login("Luke")
        started = time.monotonic()
        presenter.type("/p2pvideo Luke video.bin")
        line, finished = audience.wait(lambda l: l.startswith(("Received ", "Error")), timeout=120 + size / 1e6)
        if not line.startswith("Received "):
            raise RuntimeError(f"the transfer failed: {line}")
        presenter.wait(lambda l: l == "video.bin has been uploaded" or l.startswith("Error"), timeout=30)
        copy = work / "audience" / "Yoda_video.bin"
        identical = copy.exists() and sha256_file(copy) == expected
        return TransferResult(seconds=finished - started, bytes=size, identical=identical)
    finally:
        for client in clients:
            client.stop()
        server.stop()


class _Client:
    """client.py with piped stdin/stdout; each output line is timestamped as it is read."""

    def __init__(self, port: int, workdir: Path, flags: list[str]) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "client.py"), "127.0.0.1", str(port), "0", *flags],
            cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: "queue.Queue[tuple[str | None, float]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, ""):
            self.lines.put((line.rstrip("\n"), time.monotonic()))
        self.lines.put((None, time.monotonic()))

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, matches, timeout: float = 30.0) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line, at = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("timed out waiting for the client") from None
            if line is None:
                raise RuntimeError("the client exited")
            if matches(line):
                return line, at

    def login(self, username: str) -> None:
        passwords = dict(l.split(" ", 1) for l in (ROOT / "credentials.txt").read_text().splitlines() if l)
        self.type(username)
        self.type(passwords[username])
        self.wait(lambda l: l == "Welcome to TESSENGER!")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.type("/logout")
                self.process.wait(5)
            except (OSError, Exception):
                self.process.kill()
                self.process.wait()


# --- helpers for measure_transfer ---------------------------------------------------------

def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their SHA-256 hex digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digest = hashlib.sha256()
    block = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(block, left))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- the row ---------------------------------------------------------------------------

def cases() -> list[TransferCase]:
    return [
        # each transfer, then the same without MACs right after it: the cost of authenticating
        # every datagram (>= 0.85 x), the two measured as close together as the machine allows
        TransferCase("default datagram", None, 0.0, None, tcp_ratio=0.35),
        TransferCase("default datagram, no MAC", None, 0.0, None, mac=False),
        TransferCase("1,400-byte datagrams", SMALL_DATAGRAM, 0.0, 100.0),
        TransferCase("1,400-byte datagrams, no MAC", SMALL_DATAGRAM, 0.0, None, mac=False),
        TransferCase("default datagram, 10% loss", None, 0.10, None),
        TransferCase("default datagram, 10% loss, no MAC", None, 0.10, None, mac=False),
    ]


def measure_tcp_copy(work: Path, size: int) -> dict:
    """The best of ``TCP_COPIES`` TCP copies of the file the transfers send (same size, same bytes)."""
    original = work / "tcp_copy" / "video.bin"
    expected = make_file(original, size)
    copies = [tcp_copy(original, work / "tcp_copy" / "copy.bin") for _ in range(TCP_COPIES)]
    best = max(copies, key=lambda c: c["MBps"])
    shutil.rmtree(work / "tcp_copy")
    return {**best, "identical": all(c["identical"] for c in copies) and best["bytes"] == size,
            "all_MBps": [round(c["MBps"], 1) for c in copies], "sha256": expected}


def run(work: Path, size: int, ceiling_bytes: int) -> list[dict]:
    """One result per case: the transfer (or the placeholder) beside its raw-blast ceiling
    and, for a case with a ``tcp_ratio`` target, beside the TCP copy of the same file."""
    default, source = default_datagram()
    tcp = measure_tcp_copy(work, size) if any(case.tcp_ratio for case in cases()) else None
    rows = []
    ceilings: dict[tuple[int, float], dict] = {}
    for case in cases():
        datagram = case.datagram or default
        key = (datagram, case.loss)
        if key not in ceilings:
            ceilings[key] = blast(ceiling_bytes, datagram, case.loss)
        ceiling = ceilings[key]
        row = {
            "case": case.name, "datagram": datagram, "datagram_source": source if case.datagram is None else "fixed",
            "loss": case.loss, "target_MBps": case.target_MBps, "bytes": size,
            "ceiling_MBps": ceiling["recv_MBps"], "ceiling": ceiling,
            "target_tcp_ratio": case.tcp_ratio, "tcp_copy": tcp if case.tcp_ratio else None,
            "MBps": None, "ratio": None, "tcp_ratio": None, "identical": None, "note": "",
        }
        try:
            result = measure_transfer(work / case.name.replace(" ", "_").replace(",", "").replace("%", "pc"),
                                      size, case.datagram, case.loss, case.mac)
        except NotImplementedError as exc:
            row["note"] = str(exc) or PLACEHOLDER
        except Exception as exc:  # a failed transfer is a result, not a crash of the bench
            row["note"] = f"failed: {type(exc).__name__}: {exc}"[:300]
        else:
            row["MBps"] = result.bytes / result.seconds / 1e6
            row["ratio"] = row["MBps"] / ceiling["recv_MBps"]
            if row["tcp_copy"]:
                row["tcp_ratio"] = row["MBps"] / row["tcp_copy"]["MBps"]
            row["identical"] = result.identical
            if not result.identical:
                row["note"] = "NOT byte-identical"
        rows.append(row)
    with_macs = {r["case"]: r for r in rows if r["MBps"]}
    for r in rows:  # the cost of the MACs: each transfer beside itself without them, same run
        authenticated = with_macs.get(r["case"].removesuffix(", no MAC"))
        if r["case"].endswith(", no MAC") and r["MBps"] and authenticated:
            r["note"] = (f"{size / 2**20:.0f} MiB, byte-identical: {r['identical']}; with MACs "
                         f"{authenticated['MBps'] / r['MBps']:.2f} x this (target >= 0.85)")
    return rows
