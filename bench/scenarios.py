"""The benchmarks: each starts its own server in a fresh data directory, drives it with load
processes, and returns one or more result rows (plain dicts, printed and written as JSON)."""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import cluster, p2pvideo, presence
from .common import CpuWindow, ServerProcess, cleanup, make_certificate, make_data_dir, now, percentile
from .load import Workers, split


@dataclass(frozen=True)
class Sizes:
    relay_clients: int = 100
    relay_window: int = 64
    relay_procs: int = 2
    relay_warmup: float = 1.0
    relay_seconds: float = 5.0
    text: str = "The quick brown fox jumps over the lazy dog"  # 43 characters, a typical chat line
    latency_clients: int = 1000
    latency_rate: float = 5000.0
    latency_procs: int = 2
    latency_warmup: float = 1.0
    latency_seconds: float = 8.0
    sessions: int = 10_000
    sessions_procs: int = 4
    login_cycles: int = 1000
    login_procs: int = 2
    login_window: int = 500
    group_members: int = 500
    group_repeats: int = 100
    group_procs: int = 2
    transfer_bytes: int = 100 * 1024 * 1024
    ceiling_bytes: int = 100 * 1024 * 1024


FULL = Sizes()
QUICK = Sizes(
    relay_clients=20, relay_warmup=0.3, relay_seconds=1.0,
    latency_clients=100, latency_rate=500.0, latency_warmup=0.3, latency_seconds=1.0,
    sessions=200, sessions_procs=2, login_cycles=100, login_window=50,
    group_members=50, group_repeats=10,
    transfer_bytes=4 * 1024 * 1024, ceiling_bytes=4 * 1024 * 1024,
)


def row(name: str, figure: float | None, unit: str, target: str, met: bool | None, *, ceiling: float | None = None,
        ratio: float | None = None, note: str = "", **details: Any) -> dict[str, Any]:
    return {"name": name, "figure": figure, "unit": unit, "target": target, "met": met, "ceiling": ceiling,
            "ratio": ratio, "note": note, "details": details}


def _server(kind: str, data_dir: Path, profile: Path | None) -> ServerProcess:
    if kind == "bare":
        return ServerProcess.bare_relay(data_dir)
    return ServerProcess.tessenger(data_dir, profile)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _others(*runs: dict[str, Any]) -> str:
    """A warning when other processes took CPU while a figure was measured."""
    worst = max(r.get("others_cpu", 0.0) for r in runs)
    return f"; WARNING: other processes used up to {worst:.1f} CPUs meanwhile" if worst > 0.2 else ""


# --- relay --------------------------------------------------------------------------------

def _relay_once(kind: str, sizes: Sizes, profile: Path | None, tls: bool = False) -> dict[str, Any]:
    data_dir = make_data_dir(sizes.relay_clients)
    cert, key = make_certificate(data_dir) if tls else (None, None)
    server = (ServerProcess.tessenger(data_dir, profile, ["--tls-cert", str(cert), "--tls-key", str(key)]) if tls
              else _server(kind, data_dir, profile))
    try:
        slices = split(list(range(sizes.relay_clients)), sizes.relay_procs, even=True)
        with Workers(server.port, slices, tls_ca=str(cert) if tls else None) as workers:
            start = now() + 0.3
            mark = start + sizes.relay_warmup
            end = mark + sizes.relay_seconds
            workers.start("relay", start=start, mark=mark, end=end, window=sizes.relay_window, text=sizes.text)
            time.sleep(max(0.0, mark - now()))
            window = CpuWindow(server.pid, workers.pids)
            time.sleep(max(0.0, end - now()))
            cpu = window.stop()
            results = workers.gather()
        rate = sum(r["delivered"] / r["seconds"] for r in results)
        sent = sum(r["sent"] for r in results)
        delivered = sum(r["total_delivered"] for r in results)
        acks = sum(r["acks"] for r in results)
        logged = _count_lines(data_dir / "messagelog.txt") if kind == "server" else None
        if kind == "server" and logged < acks:
            raise RuntimeError(f"only {logged} log lines for {acks} acknowledged messages")
        return {"rate": rate, **cpu, "sent": sent, "delivered": delivered,
                "acks": acks, "log_lines": logged, "clients": sizes.relay_clients, "load_procs": len(slices)}
    finally:
        server.stop()
        cleanup(data_dir)


def relay(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    server = _relay_once("server", sizes, profile)
    bare = _relay_once("bare", sizes, None)
    secured = _relay_once("server", sizes, None, tls=True) if shutil.which("openssl") else None
    ratio = server["rate"] / bare["rate"]
    met = server["rate"] >= 50_000 and ratio >= 0.5
    return [row("relay", server["rate"], "msg/s", ">= 50,000 msg/s and >= 0.5 x bare", met,
                ceiling=bare["rate"], ratio=ratio,
                note=f"{sizes.relay_clients} clients ({sizes.relay_clients // 2} senders -> {sizes.relay_clients // 2} "
                     f"receivers), {sizes.relay_window} in flight per sender; server CPU {server['server_cpu']:.0%} "
                     f"= {server['server_cpu'] / server['rate'] * 1e6:.0f} us/msg, bare relay CPU {bare['server_cpu']:.0%}"
                     f"{_others(server, bare)}",
                server=server, bare=bare),
            *_relay_tls_row(secured, server)]


def _relay_tls_row(secured: dict[str, Any] | None, plain: dict[str, Any]) -> list[dict[str, Any]]:
    """The same relay with TLS on between every client and the server, beside the plain one."""
    if secured is None:
        return [row("relay_tls", None, "msg/s", "measured beside plain", None, note="skipped: no openssl command")]
    return [row("relay_tls", secured["rate"], "msg/s", "measured beside plain", None, ceiling=plain["rate"],
                ratio=secured["rate"] / plain["rate"],
                note=f"the relay's load over TLS (ceiling: the plain relay of this run); server CPU "
                     f"{secured['server_cpu']:.0%} = {secured['server_cpu'] / secured['rate'] * 1e6:.0f} us/msg"
                     f"{_others(secured, plain)}",
                server=secured)]


# --- latency ------------------------------------------------------------------------------

def _latency_once(kind: str, sizes: Sizes, profile: Path | None) -> dict[str, Any]:
    data_dir = make_data_dir(sizes.latency_clients)
    server = _server(kind, data_dir, profile)
    try:
        slices = split(list(range(sizes.latency_clients)), sizes.latency_procs, even=True)
        with Workers(server.port, slices) as workers:
            start = now() + 0.3
            mark = start + sizes.latency_warmup
            end = mark + sizes.latency_seconds
            workers.start("latency", start=start, mark=mark, end=end, rate=sizes.latency_rate / len(slices))
            time.sleep(max(0.0, mark - now()))
            window = CpuWindow(server.pid, workers.pids)
            time.sleep(max(0.0, end - now()))
            cpu = window.stop()
            results = workers.gather()
        samples = sorted(s for r in results for s in r["samples_us"])
        sent = sum(r["sent"] for r in results)
        received = sum(r["received"] for r in results)
        errors = [e for r in results for e in r["errors"]]
        if errors:
            raise RuntimeError(f"unexpected replies: {errors[:3]}")
        ms = [s / 1000 for s in samples]
        return {"p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90), "p99_ms": percentile(ms, 0.99),
                "max_ms": ms[-1] if ms else float("nan"), "samples": len(ms), "sent": sent, "received": received,
                "offered_rate": sizes.latency_rate, "achieved_rate": sent / results[0]["seconds"],
                **cpu, "clients": sizes.latency_clients}
    finally:
        server.stop()
        cleanup(data_dir)


def latency(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    server = _latency_once("server", sizes, profile)
    bare = _latency_once("bare", sizes, None)
    met = server["p99_ms"] < 5.0 and server["received"] >= server["sent"]
    note = (f"{sizes.latency_rate:,.0f} msg/s over {sizes.latency_clients} clients; "
            f"p50 {server['p50_ms']:.2f} ms, max {server['max_ms']:.2f} ms (bare p50 {bare['p50_ms']:.2f}, "
            f"max {bare['max_ms']:.2f}); server CPU {server['server_cpu']:.0%} "
            f"= {server['server_cpu'] / server['achieved_rate'] * 1e6:.0f} us/msg{_others(server, bare)}")
    return [row("latency p99", server["p99_ms"], "ms", "< 5 ms", met, ceiling=bare["p99_ms"],
                ratio=server["p99_ms"] / bare["p99_ms"] if bare["p99_ms"] else None, note=note,
                server=server, bare=bare)]


# --- sessions -----------------------------------------------------------------------------

def _sessions_once(kind: str, sizes: Sizes, profile: Path | None) -> dict[str, Any]:
    n = sizes.sessions
    warm = 20
    data_dir = make_data_dir(n + warm)
    server = _server(kind, data_dir, profile)
    try:
        # warm the code paths up (imports, first allocations) with a few other accounts, let them go
        with Workers(server.port, [list(range(n, n + warm))]):
            pass
        if kind == "server":
            _wait_for(lambda: _count_lines(data_dir / "userlog.txt") == 0, 5.0)
        time.sleep(0.3)
        before = server.rss_kib()
        t = now()
        with Workers(server.port, split(list(range(n)), sizes.sessions_procs), timeout=300.0) as workers:
            login_seconds = now() - t
            time.sleep(1.0)  # idle
            workers.start("idle", seconds=1.0)
            samples = []
            for _ in range(5):  # the median of a few readings while every session sits idle
                time.sleep(0.18)
                samples.append(server.rss_kib())
            results = workers.gather()
            after = statistics.median(samples)
            logged_in = sum(r["logged_in"] for r in results)
            in_userlog = _count_lines(data_dir / "userlog.txt") if kind == "server" else None
        if kind == "server" and in_userlog != logged_in:
            raise RuntimeError(f"userlog.txt lists {in_userlog} users, {logged_in} are logged in")
        return {"sessions": logged_in, "rss_before_kib": before, "rss_after_kib": after,
                "per_session_kib": (after - before) / logged_in, "login_seconds": login_seconds,
                "userlog_lines": in_userlog}
    finally:
        server.stop()
        cleanup(data_dir)


def sessions(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    server = _sessions_once("server", sizes, profile)
    bare = _sessions_once("bare", sizes, None)
    met = server["per_session_kib"] < 20 and server["sessions"] >= sizes.sessions
    return [row("sessions", server["per_session_kib"], "KiB/session", "10,000 sessions, < 20 KiB each", met,
                ceiling=bare["per_session_kib"], ratio=server["per_session_kib"] / bare["per_session_kib"],
                note=f"{server['sessions']:,} concurrent idle logged-in sessions; server RSS {server['rss_before_kib']:,} -> "
                     f"{server['rss_after_kib']:,} KiB; all logged in within {server['login_seconds']:.1f} s",
                server=server, bare=bare)]


# --- login --------------------------------------------------------------------------------

def _login_once(sizes: Sizes, hashed: bool, profile: Path | None) -> dict[str, Any]:
    n = sizes.login_cycles
    data_dir = make_data_dir(n, hashed=hashed)
    server = _server("server", data_dir, profile)
    try:
        slices = split(list(range(n)), sizes.login_procs)
        with Workers(server.port, slices, login=False) as workers:
            start = now() + 0.3
            results = workers.run("login_cycle", start=start, window=max(1, sizes.login_window // len(slices)))
        cycles = sum(r["cycles"] for r in results)
        first = min(r["start"] for r in results)
        each = sorted(ms for r in results for ms in r["login_ms"])
        userlog = data_dir / "userlog.txt"
        empty = _wait_for(lambda: userlog.exists() and userlog.stat().st_size == 0, 2.0)
        if cycles != n:
            raise RuntimeError(f"only {cycles} of {n} login/logout cycles completed")
        if not empty:
            raise RuntimeError("userlog.txt is not empty after every user logged out")
        return {"cycles": cycles, "total_seconds": max(r["last_done"] for r in results) - first,
                "logins_seconds": max(r["last_welcome"] for r in results) - first,
                "login_p50_ms": percentile(each, 0.5), "login_p99_ms": percentile(each, 0.99), "userlog_empty": empty}
    finally:
        server.stop()
        cleanup(data_dir)


def login(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    n = sizes.login_cycles
    rows = []
    for hashed in (False, True):
        r = _login_once(sizes, hashed, profile if not hashed else None)
        kind = "scrypt-hashed passwords (server.py --hash-password)" if hashed else "plain passwords"
        rows.append(row("login" + (" (scrypt)" if hashed else ""), r["total_seconds"], "s",
                        f"{n:,} logins + logouts < 2 s", r["total_seconds"] < 2.0,
                        note=f"{kind}; check_user + login + logout each, {sizes.login_window} at a time; all logged in "
                             f"after {r['logins_seconds']:.2f} s; one login p50 {r['login_p50_ms']:.1f} ms, p99 "
                             f"{r['login_p99_ms']:.1f} ms; userlog.txt empty afterwards", **r))
    return rows


# --- group fan-out ------------------------------------------------------------------------

GROUP_WARMUP = 5


def group(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    n = sizes.group_members
    repeats = sizes.group_repeats
    data_dir = make_data_dir(n)
    server = _server("server", data_dir, profile)
    name = "benchgroup"
    try:
        slices = split(list(range(n)), sizes.group_procs)
        with Workers(server.port, slices) as workers:
            workers.run_on(0, "create_group", creator=0, group=name, members=list(range(1, n)))
            workers.run("join_group", group=name, skip=0)
            total = repeats + GROUP_WARMUP
            start = now() + 0.3
            for i, pipe in enumerate(workers.pipes):  # every member but the sender gets every message
                pipe.send(("group_fanout", {"start": start, "group": name, "sender": 0, "repeats": total,
                                            "expect": total * sum(1 for m in slices[i] if m != 0)}))
            results = workers.gather()
        errors = [e for r in results for e in r["errors"]]
        if errors:
            raise RuntimeError(f"group fan-out: {errors[:3]}")
        received = sum(r["received"] for r in results)
        if received != (n - 1) * total:
            raise RuntimeError(f"{received} deliveries, expected {(n - 1) * total}")
        sent_at = results[0]["sent_at"]
        acked_at = results[0]["acked_at"]
        last: dict[int, int] = {}
        for r in results:
            for number, t in r["last_arrival"].items():
                last[number] = max(last.get(number, 0), t)
        audience = n - 1
        measured = range(GROUP_WARMUP, total)  # the first few warm the server's code paths up
        fanout_s = sorted((last[i] - sent_at[i]) / 1e9 for i in measured)
        ack_s = sorted((acked_at[i] - sent_at[i]) / 1e9 for i in measured)
        per_message = [audience / s for s in fanout_s]
        median_rate = statistics.median(per_message)
        overall = audience * repeats / ((max(last.values()) - sent_at[GROUP_WARMUP]) / 1e9)
        return [row("group fan-out", median_rate, "deliveries/s", "(no target)", None,
                    note=f"/groupmsg to {n} joined members ({audience} receivers) x {repeats}: median "
                         f"{statistics.median(fanout_s) * 1000:.1f} ms to the last member (server ack after "
                         f"{statistics.median(ack_s) * 1000:.1f} ms); {overall:,.0f} deliveries/s over the whole run",
                    members=n, repeats=repeats, deliveries=audience * repeats,
                    fanout_ms_p50=statistics.median(fanout_s) * 1000, fanout_ms_max=fanout_s[-1] * 1000,
                    ack_ms_p50=statistics.median(ack_s) * 1000, overall_deliveries_per_s=overall,
                    best_deliveries_per_s=max(per_message))]
    finally:
        server.stop()
        cleanup(data_dir)


# --- p2pvideo -----------------------------------------------------------------------------

def p2pvideo_rows(sizes: Sizes, profile: Path | None = None) -> list[dict[str, Any]]:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="tessenger-bench-p2p-"))
    try:
        results = p2pvideo.run(work, sizes.transfer_bytes, sizes.ceiling_bytes)
    finally:
        cleanup(work)
    rows = []
    for r in results:
        target = f">= {r['target_MBps']:.0f} MB/s, intact" if r["target_MBps"] else "intact"
        met = None
        if r["MBps"] is not None:
            met = bool(r["identical"]) and (r["target_MBps"] is None or r["MBps"] >= r["target_MBps"])
        note = r["note"] or f"{r['bytes'] / 2**20:.0f} MiB, byte-identical: {r['identical']}"
        dropped = f", {r['loss']:.0%} of datagrams dropped" if r["loss"] else ""
        note += (f"; {r['datagram']}-byte datagrams ({r['datagram_source']}), "
                 f"ceiling = raw UDP blast (batched as the client batches{dropped})")
        rows.append(row(f"p2pvideo: {r['case']}", r["MBps"], "MB/s", target, met, ceiling=r["ceiling_MBps"],
                        ratio=r["ratio"], note=note, transfer=r))
    return rows


BENCHMARKS: dict[str, Callable[[Sizes, Path | None], list[dict[str, Any]]]] = {
    "relay": relay,
    "latency": latency,
    "sessions": sessions,
    "login": login,
    "presence": presence.rows,
    "group": group,
    "p2pvideo": p2pvideo_rows,
    "cluster": cluster.cluster,
}
