"""The Redis anchors: redis-server instances the bench starts on free loopback ports and stops.

Two instances, both in a fresh temporary directory and listening on 127.0.0.1 only:

- ``redis``: ``--save "" --appendonly no`` -- pub/sub with nothing written anywhere;
- ``redis-aof``: ``--appendonly yes --appendfsync no`` -- the closest Redis gets to
  TESSENGER's "logged before acknowledged": every write command is appended to the AOF with
  ``write()`` before the replies of that event-loop turn leave, and fsynced only when the
  kernel decides, as TESSENGER's logs are without ``--fsync``. PUBLISH never reaches the AOF,
  so a logged message is ``RPUSH messagelog LINE`` + ``PUBLISH``.

Where no ``redis-server`` is installed, ``missing()`` says so in one line and the rows are
printed without their anchor (``make bench`` installs it first when run as root).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from .common import HOST, ServerProcess

KINDS = ("redis", "redis-aof")
DESCRIPTION = {
    "redis": "Redis PUBLISH (no persistence)",
    "redis-aof": "Redis RPUSH+PUBLISH, AOF on (appendfsync no)",
}


def binary() -> str | None:
    return shutil.which("redis-server")


def version() -> str | None:
    path = binary()
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


def missing() -> str | None:
    """One line saying why the Redis anchors cannot be measured here, or None."""
    if binary() is None:
        return ("no redis-server installed: the Redis anchors and ratios are not measured "
                "(apt-get install redis-server, or run make bench as root)")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start(kind: str, data_dir: Path) -> ServerProcess:
    """A fresh redis-server of ``kind`` with its files in ``data_dir``."""
    path = binary()
    if path is None:
        raise RuntimeError(missing())
    persistence = ["--save", "", "--appendonly", "no"] if kind == "redis" else [
        "--save", "", "--appendonly", "yes", "--appendfsync", "no"]
    last_error: Exception | None = None
    for _ in range(3):  # another process may take the free port before redis binds it
        port = _free_port()
        command = [path, "--port", str(port), "--bind", HOST, "--dir", str(data_dir), *persistence,
                   "--logfile", str(data_dir / "redis.log"), "--daemonize", "no", "--maxclients", "20000"]
        try:
            return ServerProcess(command, data_dir, kind, port=port)
        except RuntimeError as exc:
            last_error = exc
    raise RuntimeError(f"{kind} did not start: {last_error}")
