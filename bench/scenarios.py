"""The built-in benchmarks: each starts its own server in a fresh data directory (TESSENGER's
server.py, or a redis-server anchor), drives it with the same load processes, and returns
result rows (``bench.registry.row``). A row of one's own goes in ``bench/rows/``."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from . import p2pvideo, redis_anchor, reference
from .common import CpuWindow, ServerProcess, cleanup, make_certificate, make_data_dir, now, percentile
from .load import Workers, split
from .registry import Row, Sizes, row, scenario

TESSENGER = "tessenger"
LOGGED_ANCHOR = "redis-aof"  # the anchor of every logged figure: RPUSH + PUBLISH with the AOF on


def _start(kind: str, data_dir: Path, profile: Path | None) -> ServerProcess:
    if kind == TESSENGER:
        return ServerProcess.tessenger(data_dir, profile)
    return redis_anchor.start(kind, data_dir)


def _anchor_kinds(*wanted: str) -> list[str]:
    """The Redis anchors to measure: none where redis-server is missing (said once by __main__)."""
    return [] if redis_anchor.missing() else list(wanted)


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


def _verdict(ratio: float | None, limit: float, higher_is_better: bool, figure_bound: bool,
             anchor_bound: bool) -> bool | None:
    """Whether ``ratio`` meets ``limit``; None when a load-bound side leaves it open. A
    load-bound figure is a bound of the server's (a rate at least, a time at most), so the
    ratio is only a bound too."""
    if ratio is None:
        return None
    good = ratio >= limit if higher_is_better else ratio <= limit
    # a load-bound rate understates the server's: TESSENGER's helps only a pass, the anchor's only a miss
    if figure_bound and anchor_bound:
        return None
    if figure_bound:
        return True if good else None
    if anchor_bound:
        return False if not good else None
    return good


def _both(*verdicts: bool | None) -> bool | None:
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) else True


def _cpu_note(run: dict[str, Any], per: str = "msg") -> str:
    return (f"server CPU {run['server_cpu']:.0%} = {run['cpu_us']:.1f} us = {run['steps']:.1f} steps per {per}"
            f"{' (LOAD-BOUND: the load processes or the whole machine were saturated while the server idled)' if run['load_bound'] else ''}")


def _per_message(cpu: dict[str, Any], rate: float) -> dict[str, Any]:
    """The server's CPU per message (µs and reference steps) from a CpuWindow and a rate."""
    per = cpu["server_cpu"] / rate if rate else float("nan")
    return {**cpu, "cpu_us": per * 1e6, "steps": reference.steps(per) if rate else float("nan")}


# --- relay --------------------------------------------------------------------------------

def _relay_once(kind: str, sizes: Sizes, profile: Path | None, tls: bool = False) -> dict[str, Any]:
    data_dir = make_data_dir(sizes.relay_clients)
    cert, key = make_certificate(data_dir) if tls else (None, None)
    server = (ServerProcess.tessenger(data_dir, profile, ["--tls-cert", str(cert), "--tls-key", str(key)]) if tls
              else _start(kind, data_dir, profile))
    try:
        slices = split(list(range(sizes.relay_clients)), sizes.relay_procs, even=True)
        with Workers(server.port, slices, wire=kind, tls_ca=str(cert) if tls else None) as workers:
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
        acks = sum(r["acks"] for r in results)
        logged = _count_lines(data_dir / "messagelog.txt") if kind == TESSENGER else None
        if kind == TESSENGER and logged < acks:
            raise RuntimeError(f"only {logged} log lines for {acks} acknowledged messages")
        return {"rate": rate, **_per_message(cpu, rate), "sent": sum(r["sent"] for r in results),
                "delivered": sum(r["total_delivered"] for r in results), "acks": acks, "log_lines": logged,
                "clients": sizes.relay_clients, "load_procs": len(slices)}
    finally:
        server.stop()
        cleanup(data_dir)


@scenario("relay")
def relay(sizes: Sizes, profile: Path | None = None) -> list[Row]:
    ours = _relay_once(TESSENGER, sizes, profile)
    anchors = {kind: _relay_once(kind, sizes, None) for kind in _anchor_kinds("redis-aof", "redis")}
    secured = _relay_once(TESSENGER, sizes, None, tls=True) if shutil.which("openssl") else None
    shape = (f"{sizes.relay_clients} clients ({sizes.relay_clients // 2} senders -> {sizes.relay_clients // 2} "
             f"receivers), {sizes.relay_window} in flight per sender; ")
    rows = []
    for kind in ("redis-aof", "redis"):
        anchor = anchors.get(kind)
        ratio = ours["rate"] / anchor["rate"] if anchor else None
        if kind == "redis-aof":
            name, target = "relay", ">= 0.4 x Redis+AOF, <= 20 steps/msg"
            met = _both(_verdict(ratio, 0.4, True, ours["load_bound"], anchor["load_bound"] if anchor else False),
                        ours["steps"] <= 20)
        else:
            name, target, met = "relay vs Redis pub/sub", "(none)", None
        note = shape + _cpu_note(ours)
        if anchor:
            note += f"; anchor: {redis_anchor.DESCRIPTION[kind]}, its {_cpu_note(anchor)}"
        rows.append(row(name, ours["rate"], "msg/s", target, met, anchor=anchor["rate"] if anchor else None,
                        ratio=ratio, steps=ours["steps"], note=note + _others(ours, *anchors.values()),
                        load_bound=ours["load_bound"], anchor_load_bound=bool(anchor and anchor["load_bound"]),
                        server=ours, anchor_run=anchor))
        if kind == "redis-aof" and not anchors:
            break  # without Redis one row says it all
    return rows + _relay_tls_row(secured, ours)


def _relay_tls_row(secured: dict[str, Any] | None, plain: dict[str, Any]) -> list[Row]:
    """The same relay with TLS on between every client and the server, beside the plain one."""
    if secured is None:
        return [row("relay_tls", None, "msg/s", "measured beside plain", None, note="skipped: no openssl command")]
    return [row("relay_tls", secured["rate"], "msg/s", "measured beside plain", None, anchor=plain["rate"],
                ratio=secured["rate"] / plain["rate"], steps=secured["steps"],
                note=f"the relay's load over TLS (anchor: the plain relay of this run); {_cpu_note(secured)}"
                     f"{_others(secured, plain)}",
                load_bound=secured["load_bound"], anchor_load_bound=plain["load_bound"], server=secured)]


# --- latency ------------------------------------------------------------------------------

def _latency_once(kind: str, sizes: Sizes, profile: Path | None) -> dict[str, Any]:
    data_dir = make_data_dir(sizes.latency_clients)
    server = _start(kind, data_dir, profile)
    try:
        slices = split(list(range(sizes.latency_clients)), sizes.latency_procs, even=True)
        with Workers(server.port, slices, wire=kind) as workers:
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
        achieved = sent / results[0]["seconds"]
        return {"p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90), "p99_ms": percentile(ms, 0.99),
                "max_ms": ms[-1] if ms else float("nan"), "samples": len(ms), "sent": sent, "received": received,
                "offered_rate": sizes.latency_rate, "achieved_rate": achieved, **_per_message(cpu, achieved),
                "clients": sizes.latency_clients}
    finally:
        server.stop()
        cleanup(data_dir)


@scenario("latency")
def latency(sizes: Sizes, profile: Path | None = None) -> list[Row]:
    ours = _latency_once(TESSENGER, sizes, profile)
    anchor = next((_latency_once(k, sizes, None) for k in _anchor_kinds(LOGGED_ANCHOR)), None)
    ratio = ours["p99_ms"] / anchor["p99_ms"] if anchor and anchor["p99_ms"] else None
    complete = ours["received"] >= ours["sent"]
    met = _both(ours["p99_ms"] < 5.0 and complete, _verdict(ratio, 1.2, False, False, False))
    note = (f"{sizes.latency_rate:,.0f} msg/s over {sizes.latency_clients} clients; p50 {ours['p50_ms']:.2f} ms, "
            f"max {ours['max_ms']:.2f} ms; {_cpu_note(ours)}")
    if anchor:
        note += (f"; anchor: {redis_anchor.DESCRIPTION[LOGGED_ANCHOR]}, p50 {anchor['p50_ms']:.2f} ms, "
                 f"max {anchor['max_ms']:.2f} ms")
    return [row("latency p99", ours["p99_ms"], "ms", "< 5 ms, <= 1.2 x Redis+AOF", met,
                anchor=anchor["p99_ms"] if anchor else None, ratio=ratio, steps=ours["steps"],
                note=note + _others(ours, *([anchor] if anchor else [])), server=ours, anchor_run=anchor)]


# --- sessions -----------------------------------------------------------------------------

def _sessions_once(sizes: Sizes, profile: Path | None) -> dict[str, Any]:
    n = sizes.sessions
    warm = 20
    data_dir = make_data_dir(n + warm)
    server = _start(TESSENGER, data_dir, profile)
    try:
        # warm the code paths up (imports, first allocations) with a few other accounts, let them go
        with Workers(server.port, [list(range(n, n + warm))]):
            pass
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
            in_userlog = _count_lines(data_dir / "userlog.txt")
        if in_userlog != logged_in:
            raise RuntimeError(f"userlog.txt lists {in_userlog} users, {logged_in} are logged in")
        return {"sessions": logged_in, "rss_before_kib": before, "rss_after_kib": after,
                "per_session_kib": (after - before) / logged_in, "login_seconds": login_seconds,
                "userlog_lines": in_userlog}
    finally:
        server.stop()
        cleanup(data_dir)


@scenario("sessions")
def sessions(sizes: Sizes, profile: Path | None = None) -> list[Row]:
    server = _sessions_once(sizes, profile)
    met = server["per_session_kib"] <= 2 and server["sessions"] >= sizes.sessions
    return [row("sessions", server["per_session_kib"], "KiB/session", "10,000 sessions, <= 2 KiB each", met,
                note=f"{server['sessions']:,} concurrent idle logged-in sessions; server RSS {server['rss_before_kib']:,} -> "
                     f"{server['rss_after_kib']:,} KiB; all logged in within {server['login_seconds']:.1f} s",
                server=server)]


# --- login --------------------------------------------------------------------------------

def _login_once(sizes: Sizes, hashed: bool, profile: Path | None) -> dict[str, Any]:
    n = sizes.login_cycles
    data_dir = make_data_dir(n, hashed=hashed)
    server = _start(TESSENGER, data_dir, profile)
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


@scenario("login")
def login(sizes: Sizes, profile: Path | None = None) -> list[Row]:
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

GROUP = "benchgroup"


def _group_once(kind: str, sizes: Sizes, profile: Path | None) -> dict[str, Any]:
    n = sizes.group_members
    gate = n - 1  # named and joined last: the member every message reaches last
    data_dir = make_data_dir(n)
    server = _start(kind, data_dir, profile)
    try:
        # the sender and the gate in one process (so it knows what is in flight), the rest beside
        slices = [[0, gate], *split(list(range(1, gate)), sizes.group_procs)]
        with Workers(server.port, slices, wire=kind) as workers:
            workers.run_on(0, "create_group", creator=0, group=GROUP, members=list(range(1, n)))
            workers.run("join_group", group=GROUP, members=list(range(1, gate)))
            workers.run_on(0, "join_group", group=GROUP, members=[gate])
            start = now() + 0.3
            mark = start + sizes.group_warmup
            end = mark + sizes.group_seconds
            workers.start("group_fanout", start=start, mark=mark, end=end, group=GROUP, sender=0, gate=gate,
                          window=sizes.group_window, text=sizes.text)
            time.sleep(max(0.0, mark - now()))
            window = CpuWindow(server.pid, workers.pids)
            time.sleep(max(0.0, end - now()))
            cpu = window.stop()
            results = workers.gather()
        posted = results[0]["posted"]
        delivered = sum(r["total_delivered"] for r in results)
        if delivered != posted * (n - 1):
            raise RuntimeError(f"{kind}: {delivered} deliveries of {posted} messages to {n - 1} members")
        rate = sum(r["delivered"] for r in results) / results[0]["seconds"]
        return {"rate": rate, **_per_message(cpu, rate), "posted": posted, "deliveries": delivered, "members": n}
    finally:
        server.stop()
        cleanup(data_dir)


@scenario("group")
def group(sizes: Sizes, profile: Path | None = None) -> list[Row]:
    ours = _group_once(TESSENGER, sizes, profile)
    anchor = next((_group_once(k, sizes, None) for k in _anchor_kinds(LOGGED_ANCHOR)), None)
    ratio = ours["rate"] / anchor["rate"] if anchor else None
    met = _verdict(ratio, 0.6, True, ours["load_bound"], bool(anchor and anchor["load_bound"]))
    note = (f"/groupmsg to {sizes.group_members} joined members ({sizes.group_members - 1} receivers), "
            f"{sizes.group_window} messages in flight, sustained {sizes.group_seconds:g} s; every delivery checked; "
            f"{_cpu_note(ours, 'delivery')}")
    if anchor:
        note += f"; anchor: {redis_anchor.DESCRIPTION[LOGGED_ANCHOR]} to a channel, its {_cpu_note(anchor, 'delivery')}"
    return [row("group fan-out", ours["rate"], "deliveries/s", ">= 0.6 x Redis+AOF", met,
                anchor=anchor["rate"] if anchor else None, ratio=ratio, steps=ours["steps"],
                note=note + _others(ours, *([anchor] if anchor else [])), load_bound=ours["load_bound"],
                anchor_load_bound=bool(anchor and anchor["load_bound"]), server=ours, anchor_run=anchor)]


# --- p2pvideo -----------------------------------------------------------------------------

@scenario("p2pvideo")
def p2pvideo_rows(sizes: Sizes, profile: Path | None = None) -> list[Row]:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="tessenger-bench-p2p-"))
    try:
        results = p2pvideo.run(work, sizes.transfer_bytes, sizes.ceiling_bytes)
    finally:
        cleanup(work)
    rows = []
    for r in results:
        target = f">= {r['target_MBps']:.0f} MB/s, intact" if r["target_MBps"] else "intact"
        if r["target_tcp_ratio"]:
            target = f">= {r['target_tcp_ratio']} x Python TCP copy, intact"
        met = None
        if r["MBps"] is not None:
            met = (bool(r["identical"]) and (r["target_MBps"] is None or r["MBps"] >= r["target_MBps"])
                   and (r["target_tcp_ratio"] is None or r["tcp_ratio"] >= r["target_tcp_ratio"]))
        note = r["note"] or f"{r['bytes'] / 2**20:.0f} MiB, byte-identical: {r['identical']}"
        dropped = f", {r['loss']:.0%} of datagrams dropped" if r["loss"] else ""
        note += f"; {r['datagram']}-byte datagrams ({r['datagram_source']})"
        ceiling = f"raw UDP blast (batched as the client batches{dropped})"
        anchor, ratio = r["ceiling_MBps"], r["ratio"]
        if r["tcp_copy"]:  # the target's anchor in the table; the UDP ceiling in the note
            tcp = r["tcp_copy"]
            anchor, ratio = tcp["MBps"], r["tcp_ratio"]
            note += (f"; anchor = TCP copy of the same file by Python sockets between two processes, SHA-256 "
                     f"checked (best of {len(tcp['all_MBps'])}: {', '.join(f'{v:,.0f}' for v in tcp['all_MBps'])} "
                     f"MB/s, intact: {tcp['identical']}); {ceiling}: {r['ceiling_MBps']:,.0f} MB/s"
                     + (f" ({r['ratio']:.2f} x)" if r["ratio"] is not None else ""))
        else:
            note += f", ceiling = {ceiling}"
        rows.append(row(f"p2pvideo: {r['case']}", r["MBps"], "MB/s", target, met, anchor=anchor,
                        ratio=ratio, note=note, transfer=r))
    return rows
