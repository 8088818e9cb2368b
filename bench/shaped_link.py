"""The UDP file transfer through a shaped link between two network namespaces (issue 12).

    python3 -m bench.shaped_link [--quick] [--no-congestion-control] [--no-loopback] [--only TEXT] [--json PATH]

Builds two namespaces joined by a veth pair, shapes the sender's side with
``tc qdisc add dev X root tbf rate R burst 32kbit latency 50ms`` and runs the transfer
engine between them (``bench/transfer_loopback.py``'s ``TransferLoop``: the client's select
loop, ``shell.datagrams.DatagramPort``), each peer a process inside its namespace. Cases: 50 and
10 Mbit/s; 50 Mbit/s shared with a long-running TCP flow started first (once CUBIC, once BBR); 50 Mbit/s with 1%
of the datagrams arriving in the receiving namespace dropped
(``iptables -m statistic --mode random --probability 0.01 -j DROP``). Reported per case:
goodput (file bytes over the transfer's time) as a share of the link, DATA datagrams offered
over those needed, and the TCP flow's share while the transfer ran. Beside each shared case, its
anchor: a second TCP flow of the same kind joins the long-running one in the transfer's place
for as many seconds, and both flows' shares are reported -- how evenly TCP itself shares
this link in that time (on this zero-delay link with a 50 ms queue, often far from evenly).
Needs root, ``ip``,
``tc`` and (for the loss case) ``iptables``; says which is missing and stops otherwise.
Everything it creates carries the process id in its name and is removed at the end.

First, what the controller costs where the CPU, not the link, is the bottleneck: loopback
transfers (``bench/transfer_loopback.py``) with the controller and without it (``alternating``),
at the default datagram size and at 1,400 bytes (target: at least 0.9 times as fast), and
at 10% loss (intact).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import stolen_share, stolen_ticks
from bench.transfer_loopback import (SOCKET_BUFFER, Transfer, TransferLoop, alternating, transfer_once,
                                     write_random_file)
from core.transfer import ETHERNET_DATAGRAM_SIZE, LOOPBACK_DATAGRAM_SIZE, Completed, Receiver, Sender
from core.transfer_wire import DATA_HEADER_SIZE

ROOT = Path(__file__).resolve().parent.parent
SENDER_IP, RECEIVER_IP = "10.99.0.1", "10.99.0.2"
TCP_PORT = 5201


def missing_tools(loss: bool = False) -> str | None:
    """Why the shaped link cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    for tool in ("ip", "tc") + (("iptables",) if loss else ()):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    return None


def missing_algorithm(algorithm: str) -> str | None:
    """Why a TCP flow cannot use congestion control ``algorithm`` here, or None."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control", encoding="ascii") as f:
            available = f.read().split()
    except OSError:
        return "cannot tell which TCP congestion controls the kernel has"
    if algorithm in available:
        return None
    with contextlib.suppress(OSError):  # a module the kernel has but has not loaded yet
        subprocess.run(["modprobe", f"tcp_{algorithm}"], capture_output=True, timeout=30)
        with socket.socket() as probe:
            probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())
            return None
    return f"the kernel has no TCP {algorithm}"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def shaped_link(rate: str, *, loss: float = 0.0, tag: str = "") -> Iterator[tuple[str, str]]:
    """Two namespaces (sender, receiver) joined by a veth pair whose sender end is shaped by
    tbf at ``rate``; ``loss``: the receiving namespace drops that fraction of what arrives.
    Yields the namespaces' names; removes everything on the way out."""
    suffix = f"{os.getpid()}{tag}"
    sender_ns, receiver_ns = f"tsg-s{suffix}", f"tsg-r{suffix}"
    sender_if, receiver_if = f"tsgs{suffix}"[:15], f"tsgr{suffix}"[:15]
    try:
        _run("ip", "netns", "add", sender_ns)
        _run("ip", "netns", "add", receiver_ns)
        _run("ip", "link", "add", sender_if, "netns", sender_ns, "type", "veth", "peer", "name", receiver_if,
             "netns", receiver_ns)
        for ns, interface, address in ((sender_ns, sender_if, SENDER_IP), (receiver_ns, receiver_if, RECEIVER_IP)):
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", interface)
            _run("ip", "-n", ns, "link", "set", interface, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", sender_ns, "tc", "qdisc", "add", "dev", sender_if, "root", "tbf",
             "rate", rate, "burst", "32kbit", "latency", "50ms")
        if loss:
            _run("ip", "netns", "exec", receiver_ns, "iptables", "-A", "INPUT", "-m", "statistic", "--mode",
                 "random", "--probability", str(loss), "-j", "DROP")
        yield sender_ns, receiver_ns
    finally:  # deleting a namespace deletes its veth end, the peer end, its qdisc and its rules
        for ns in (sender_ns, receiver_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# --- the peers, each a process inside its namespace ---------------------------------------------


def _peer(namespace: str, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "bench.shaped_link", *arguments],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _ask(process: subprocess.Popen[str], message: Any = None) -> Any:
    assert process.stdin is not None and process.stdout is not None
    if message is not None:
        process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"a peer exited early (status {process.wait()})")
    return json.loads(line)


def _udp_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((address, 0))
    return sock


def serve_sender(path: str, congestion_control: bool) -> None:
    sock = _udp_socket(SENDER_IP)
    print(json.dumps(sock.getsockname()[1]), flush=True)
    transfer_id, port = json.loads(sys.stdin.readline())
    loop = TransferLoop(sock)
    sender = Sender(bytes.fromhex(transfer_id), os.path.getsize(path), time.monotonic(),
                    datagram_size=ETHERNET_DATAGRAM_SIZE, congestion_control=congestion_control)
    loop.add(Transfer(sender, (RECEIVER_IP, port), io.FileIO(path, "rb"), Path(path)))
    print(json.dumps("ready"), flush=True)
    loop.run(until_finished=True)
    model = sender.controller
    state = {} if model is None else {"mode": model.mode.value, "btlbw_Bps": model.btlbw, "min_rtt": model.min_rtt,
                                      "cwnd": model.cwnd, "inflight_hi": str(model.inflight_hi)}
    print(json.dumps({"completed": isinstance(loop.finished[0].outcome, Completed), "resent": sender.resent,
                      "controller": state}), flush=True)


def serve_receiver(directory: str, size: int) -> None:
    sock = _udp_socket(RECEIVER_IP)
    print(json.dumps(sock.getsockname()[1]), flush=True)
    transfer_id, port = json.loads(sys.stdin.readline())
    loop = TransferLoop(sock)
    window = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) * 3 // 4
    fd, temp = tempfile.mkstemp(dir=directory, suffix=".part")
    started = time.monotonic()
    receiver = Receiver(bytes.fromhex(transfer_id), size, started, window=window)
    loop.add(Transfer(receiver, (SENDER_IP, port), io.FileIO(fd, "wb"), Path(directory) / "received", temp=Path(temp)))
    loop.run(until_finished=True)
    finished = loop.finished[0]
    print(json.dumps({"completed": isinstance(finished.outcome, Completed), "started": started,
                      "seconds": finished.finished_at - started}), flush=True)


def serve_tcp_sink(port: int) -> None:
    """Accept one connection on ``port`` and count its bytes; each line on stdin asks for
    the counts so far, as [time, bytes] every 50 ms."""
    listener = socket.create_server((RECEIVER_IP, port))
    print(json.dumps("listening"), flush=True)
    connection, _ = listener.accept()
    connection.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(connection, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    received = 0
    counts: list[tuple[float, int]] = []
    while True:
        for key, _ in selector.select(0.05):
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    return
                print(json.dumps(counts + [(time.monotonic(), received)]), flush=True)
            else:
                data = connection.recv(1 << 20)
                if not data:
                    return
                received += len(data)
        if not counts or time.monotonic() >= counts[-1][0] + 0.05:
            counts.append((time.monotonic(), received))


def serve_tcp_source(algorithm: str, port: int) -> None:
    """Send to ``port`` as fast as TCP with congestion control ``algorithm`` lets, until killed."""
    connection = socket.socket()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())
    connection.connect((RECEIVER_IP, port))
    block = bytes(1 << 16)
    print(json.dumps("sending"), flush=True)
    with contextlib.suppress(OSError):
        while True:
            connection.sendall(block)


# --- the cases --------------------------------------------------------------------------


def transfer(namespaces: tuple[str, str], source: Path, work: Path, congestion_control: bool) -> dict[str, Any]:
    sender_ns, receiver_ns = namespaces
    size = source.stat().st_size
    sender = _peer(sender_ns, "sender", str(source), str(int(congestion_control)))
    receiver = _peer(receiver_ns, "receiver", str(work), str(size))
    try:
        sender_port, receiver_port = _ask(sender), _ask(receiver)
        transfer_id = os.urandom(16).hex()
        _ask(sender, [transfer_id, receiver_port])  # "ready": the sender knows the transfer first
        received = _ask(receiver, [transfer_id, sender_port])
        sent = _ask(sender)
    finally:
        for process in (sender, receiver):
            process.kill()
            process.wait()
    needed = -(-size // (ETHERNET_DATAGRAM_SIZE - DATA_HEADER_SIZE))
    return {"bytes": size, "seconds": received["seconds"], "started": received["started"],
            "completed": sent["completed"] and received["completed"], "offered": (needed + sent["resent"]) / needed,
            "controller_at_end": sent["controller"]}


@contextlib.contextmanager
def tcp_flow(namespaces: tuple[str, str], algorithm: str, port: int = TCP_PORT) -> Iterator[subprocess.Popen[str]]:
    """A TCP flow across the link for as long as the block runs; yields its sink, which
    answers "count" with [time, bytes received] every 50 ms."""
    sink, source = _peer(namespaces[1], "tcp-sink", str(port)), None
    try:
        _ask(sink)
        source = _peer(namespaces[0], "tcp-source", algorithm, str(port))
        _ask(source)
        yield sink
    finally:
        for process in (source, sink):
            if process is not None:
                process.kill()
                process.wait()


def counts_between(counts: list[tuple[float, int]], start: float, end: float) -> list[tuple[float, int]]:
    """A sink's counts from ``start`` to ``end`` (the clock is the same in every namespace)."""
    return [(t, b) for t, b in counts if start <= t <= end]


def rate_of(counts: list[tuple[float, int]]) -> float:
    """Bytes per second from the first of a sink's counts to the last."""
    (t0, b0), (t1, b1) = counts[0], counts[-1]
    return (b1 - b0) / (t1 - t0)


def tcp_alone(namespaces: tuple[str, str], seconds: float, algorithm: str) -> float:
    """TCP's goodput on the link by itself, bytes/s: the anchor of the shared case."""
    with tcp_flow(namespaces, algorithm) as sink:
        time.sleep(1.0)  # past slow start
        start = time.monotonic()
        time.sleep(seconds)
        return rate_of(counts_between(_ask(sink, "count"), start, time.monotonic()))


def beside_tcp(namespaces: tuple[str, str], algorithm: str, joining: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``joining()`` runs on the link while a long-running TCP flow holds it (started 2 s
    before); its result, with the TCP flow's rate over the same seconds (``tcp_rate``)."""
    with tcp_flow(namespaces, algorithm) as sink:
        time.sleep(2.0)
        result = joining()
        counts = _ask(sink, "count")
    start, end = result["started"], result["started"] + result["seconds"]
    during = counts_between(counts, start, end)
    result["tcp_rate"] = rate_of(during)
    result["tcp_per_second"] = [round((b - during[0][1]) / 1e6, 2) for t, b in during[::20]]
    return result


def second_tcp_flow(namespaces: tuple[str, str], algorithm: str, seconds: float) -> dict[str, Any]:
    """A second TCP flow of the same kind in the transfer's place, for as long as it took:
    what TCP itself gets when it joins the long-running flow (the shared cases' anchor)."""
    with tcp_flow(namespaces, algorithm, TCP_PORT + 1) as sink:
        started = time.monotonic()
        time.sleep(seconds)
        during = counts_between(_ask(sink, "count"), started, started + seconds)
        return {"started": started, "seconds": seconds, "rate": rate_of(during)}


def run(quick: bool, congestion_control: bool, only: str = "") -> list[dict[str, Any]]:
    scale = 0.25 if quick else 1.0
    results = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        (work / "in").mkdir()
        (work / "out").mkdir()
        os.chmod(work, 0o755)
        # the TCP flow beside the file: CUBIC, Linux's default and most of the TCP a campus
        # link carries, then BBR (which this machine's kernel may use by default)
        cases = [("50 Mbit/s", 50, 0.0, None, 30), ("10 Mbit/s", 10, 0.0, None, 8),
                 ("50 Mbit/s + TCP cubic", 50, 0.0, "cubic", 60), ("50 Mbit/s + TCP bbr", 50, 0.0, "bbr", 60),
                 ("50 Mbit/s, 1% loss", 50, 0.01, None, 30)]
        for name, mbit, loss, algorithm, mib in [case for case in cases if only in case[0]]:
            why = missing_tools(loss=bool(loss)) or (algorithm and missing_algorithm(algorithm))
            if why:
                results.append({"case": name, "skipped": why})
                continue
            source = work / "in" / f"{mib}.bin"
            if not source.exists():
                write_random_file(source, int(mib * scale * 2**20))
            link = mbit * 1e6 / 8
            ticks = stolen_ticks()
            with shaped_link(f"{mbit}mbit", loss=loss) as namespaces:
                if algorithm:
                    alone = tcp_alone(namespaces, 3.0 * scale + 1, algorithm)
                    result = beside_tcp(namespaces, algorithm,
                                        lambda: transfer(namespaces, source, work / "out", congestion_control))
                    anchor = beside_tcp(namespaces, algorithm,
                                        lambda: second_tcp_flow(namespaces, algorithm, result["seconds"]))
                    result.update(tcp_alone=alone / link, tcp_share=result["tcp_rate"] / link,
                                  anchor_joining=anchor["rate"] / link, anchor_long=anchor["tcp_rate"] / link)
                else:
                    result = transfer(namespaces, source, work / "out", congestion_control)
            result.update(case=name, link_Bps=link, goodput=result["bytes"] / result["seconds"] / link,
                          stolen=stolen_share(ticks, stolen_ticks()))
            (work / "out" / "received").unlink(missing_ok=True)
            results.append(result)
    return results


def loopback(quick: bool, repeat: int = 9) -> list[dict[str, Any]]:
    """What the controller costs where the CPU is the bottleneck: loopback transfers with it
    and without it, ``repeat`` times each in balanced order after a warm-up of each
    (``alternating``); the median of each, and the range of the ratios of each pair. Nine
    pairs, as for the MAC's cost (``make bench``): single loopback runs are bimodal
    (BENCHMARKS.md), and with five pairs the median ratio moved by 0.85-1.15 between runs."""
    results = []
    with tempfile.TemporaryDirectory() as sending, tempfile.TemporaryDirectory() as receiving:
        source = Path(sending) / "file.bin"
        write_random_file(source, (16 if quick else 64) * 2**20)
        for name, datagram, loss in (("loopback, default datagram", LOOPBACK_DATAGRAM_SIZE, 0.0),
                                     ("loopback, 1,400 bytes", 1_400, 0.0),
                                     ("loopback, 10% loss", LOOPBACK_DATAGRAM_SIZE, 0.1)):
            on_runs, off_runs = alternating(
                lambda: transfer_once(source, Path(receiving), datagram, loss, congestion_control=True),
                lambda: transfer_once(source, Path(receiving), datagram, loss, congestion_control=False), repeat)
            on, off = (sorted(runs, key=lambda r: r["MBps"])[repeat // 2] for runs in (on_runs, off_runs))
            pairs = sorted(a["MBps"] / b["MBps"] for a, b in zip(on_runs, off_runs))
            results.append({"case": name, "on_MBps": on["MBps"], "off_MBps": off["MBps"],
                            "ratio": on["MBps"] / off["MBps"], "pair_ratios": pairs,
                            "intact": all(r["intact"] and not r["leftovers"] for r in on_runs + off_runs)})
    return results


def report_loopback(results: list[dict[str, Any]]) -> str:
    lines = [f"{'case':<28} {'on MB/s':>8} {'off MB/s':>9} {'on/off':>7} {'pairs':>11} {'target':>7}  result"]
    for r in results:
        target = None if "loss" in r["case"] else 0.9
        met = "" if target is None else "met" if r["ratio"] >= target else "MISSED"
        spread = f"{r['pair_ratios'][0]:.2f}-{r['pair_ratios'][-1]:.2f}"
        lines.append(f"{r['case']:<28} {r['on_MBps']:>8.0f} {r['off_MBps']:>9.0f} {r['ratio']:>7.2f} {spread:>11} "
                     f"{target or '':>7}  {'intact' if r['intact'] else 'NOT INTACT'} {met}")
    return "\n".join(lines)


# Above this share of the CPUs taken by a virtual machine's host (steal time) while a case
# ran, its figures say as much about the host as about the transfer: a peer that waits for a
# CPU falls behind the link.
STEAL_WARNING = 0.05


def disturbed(stolen: float) -> str:
    return f"; the host took {stolen:.0%} of the CPUs: disturbed" if stolen >= STEAL_WARNING else ""


def report(results: list[dict[str, Any]], congestion_control: bool) -> str:
    lines = [f"shaped link (tbf burst 32kbit latency 50ms on the sender's veth), 1,472-byte datagrams, "
             f"congestion control {'on' if congestion_control else 'OFF'}",
             f"{'case':<22} {'goodput':>8} {'target':>7} {'offered/needed':>15} {'TCP share':>10}  result"]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['case']:<22} cannot run: {r['skipped']}")
            continue
        target = 0.8 if "loss" in r["case"] else 0.4 if "TCP" in r["case"] else 0.9
        tcp = f"{r['tcp_share']:.0%} (alone {r['tcp_alone']:.0%})" if "tcp_share" in r else ""
        met = r["goodput"] >= target and (r["offered"] <= 1.1 or target != 0.9)
        met = met and r.get("tcp_share", 1.0) >= 0.4
        lines.append(f"{r['case']:<22} {r['goodput']:>8.0%} {target:>7.0%} {r['offered']:>15.2f} {tcp:>10}  "
                     f"{'intact' if r['completed'] else 'FAILED'} {'met' if met else 'MISSED'} ({r['seconds']:.1f} s)"
                     f"{disturbed(r.get('stolen', 0.0))}")
        if "anchor_joining" in r:
            lines.append(f"{'':<4}anchor: a second TCP flow in the file's place for as long got "
                         f"{r['anchor_joining']:.0%}, the long-running one {r['anchor_long']:.0%}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["sender"]:
        serve_sender(argv[1], argv[2] == "1")
    elif argv[:1] == ["receiver"]:
        serve_receiver(argv[1], int(argv[2]))
    elif argv[:1] == ["tcp-sink"]:
        serve_tcp_sink(int(argv[1]))
    elif argv[:1] == ["tcp-source"]:
        serve_tcp_source(argv[1], int(argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--quick", action="store_true", help="a quarter of the sizes")
        parser.add_argument("--no-congestion-control", dest="congestion_control", action="store_false",
                            help="the receiver's window alone, as before issue 12")
        parser.add_argument("--json", type=Path, help="also write the results here")
        parser.add_argument("--only", default="", metavar="TEXT", help="only the cases whose name contains TEXT")
        parser.add_argument("--no-loopback", dest="loopback", action="store_false",
                            help="skip the loopback comparison (controller on against off)")
        args = parser.parse_args(argv)
        compared = loopback(args.quick) if args.loopback else []
        if compared:
            print(report_loopback(compared), flush=True)
        why = missing_tools()
        results = [] if why else run(args.quick, args.congestion_control, args.only)
        print(f"shaped link: cannot run: {why}" if why else report(results, args.congestion_control))
        if args.json:
            args.json.write_text(json.dumps({"loopback": compared, "shaped": results}, indent=2) + "\n")
        intact = all(r["intact"] for r in compared) and all(r.get("completed", True) for r in results)
        return 0 if intact else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
