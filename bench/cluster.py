"""The cluster rows (SPEC §8, §10): relay msg/s and CPU per message with 1, 2 and 3 nodes beside
the single process, and the p99 latency of cross-node messages at 5,000 msg/s.

Each run starts its own redis-server (AOF fsynced per write, as README recommends) on a free
loopback port and the nodes on ports of their own, and places every client on a node: the
pairs 2k -> 2k+1 of the relay sit on node k mod N, the receiver of every odd pair on the next
node, so half of the messages cross nodes; in the latency run every pair crosses. CPU per
message counts every node and Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import HOST, ServerProcess, cleanup, cpu_seconds, make_data_dir, now, percentile
from .load import Workers, split

if TYPE_CHECKING:
    from .scenarios import Sizes


APPENDFSYNC = "always"


class Redis:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tessenger-bench-redis-"))
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory), "--save", "",
             "--appendonly", "yes", "--appendfsync", APPENDFSYNC], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        cleanup(self.directory)


def node_of(index: int, nodes: int, all_cross: bool) -> int:
    """Where client ``index`` connects: pair k's sender on node k mod N, its receiver on the
    next node for every pair (``all_cross``) or for every odd pair (half the messages)."""
    pair = index // 2
    moved = index & 1 and (all_cross or pair & 1)
    return (pair + moved) % nodes


def _run(nodes: int, clients: int, procs: int, all_cross: bool, command: str, warmup: float, seconds: float,
         **arguments: Any) -> tuple[list[dict[str, Any]], float, float]:
    """One command over a fresh cluster; the workers' results, the seconds measured and the CPU
    seconds the nodes and Redis used meanwhile."""
    data_dir = make_data_dir(clients)
    redis = Redis()
    servers: list[ServerProcess] = []
    try:
        servers = [ServerProcess.tessenger(data_dir, extra=["--redis", redis.url]) for _ in range(nodes)]
        ports = {i: servers[node_of(i, nodes, all_cross)].port for i in range(clients)}
        pids = [redis.pid, *(s.pid for s in servers)]
        with Workers(ports, split(list(range(clients)), procs, even=True)) as workers:  # type: ignore[arg-type]
            start = now() + 0.3
            mark = start + warmup
            end = mark + seconds
            workers.start(command, start=start, mark=mark, end=end, **arguments)
            time.sleep(max(0.0, mark - now()))
            cpu0 = sum(map(cpu_seconds, pids))
            time.sleep(max(0.0, end - now()))
            cpu = sum(map(cpu_seconds, pids)) - cpu0
            return workers.gather(), end - mark, cpu
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        cleanup(data_dir)


def cluster(sizes: "Sizes", profile: Path | None = None) -> list[dict[str, Any]]:
    from .scenarios import TESSENGER, _relay_once, row

    missing = [what for what, present in (("redis-server", shutil.which("redis-server")),
                                          ("hiredis", _has_hiredis())) if not present]
    if missing:
        return [row("cluster", None, "", "relay and cross-node latency, 1-3 nodes", None,
                    note=f"not run: {' and '.join(missing)} missing (apt-get install redis-server; pip install hiredis)")]
    single = _relay_once(TESSENGER, sizes, None)
    rows = []
    for nodes in (1, 2, 3):
        results, seconds, cpu = _run(nodes, sizes.relay_clients, sizes.relay_procs, False, "relay",
                                     sizes.relay_warmup, sizes.relay_seconds, window=sizes.relay_window, text=sizes.text)
        rate = sum(r["delivered"] / r["seconds"] for r in results)
        rows.append(row(f"cluster relay, {nodes} node{'s' * (nodes > 1)}", rate, "msg/s",
                        "beside one process", None, anchor=single["rate"], ratio=rate / single["rate"],
                        note=f"{sizes.relay_clients} clients spread evenly, half the messages cross nodes; CPU of "
                             f"the nodes and Redis {cpu / seconds:.0%} = {cpu / (rate * seconds) * 1e6:.0f} us/msg "
                             f"(one process: {single['server_cpu'] / single['rate'] * 1e6:.0f} us/msg)"))
    results, seconds, cpu = _run(3, sizes.latency_clients, sizes.latency_procs, True, "latency",
                                 sizes.latency_warmup, sizes.latency_seconds, rate=sizes.latency_rate / sizes.latency_procs)
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise RuntimeError(f"unexpected replies: {errors[:3]}")
    ms = sorted(s / 1000 for r in results for s in r["samples_us"])
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    rows.append(row("cluster latency p99, cross-node", percentile(ms, 0.99), "ms", "< 5 ms",
                    percentile(ms, 0.99) < 5.0 and received >= sent,
                    note=f"3 nodes, {sizes.latency_rate:,.0f} msg/s over {sizes.latency_clients} clients, every "
                         f"message to another node; p50 {percentile(ms, 0.5):.2f} ms, max {ms[-1] if ms else 0:.2f} ms; "
                         f"{received} of {sent} delivered; CPU of the nodes and Redis {cpu / seconds:.0%}"))
    return rows


def _has_hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True
