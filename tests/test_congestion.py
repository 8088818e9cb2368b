"""The congestion controller (core/congestion.py): the model on its own, and the sender on a
simulated bottleneck (test_transfer's channel with a fixed-size queue draining at a fixed
rate, on a fake clock); one real transfer through a shaped veth between two namespaces."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import shaped_link as shaped
from bench.transfer_loopback import write_random_file
from core.congestion import (CWND_GAIN, FIRST_PROBE_RTT_AFTER, LOSS_BACKOFF, MIN_RTT_LIFETIME, MIN_RTT_WINDOW, PACING_BURST, SEND_QUANTUM,
                             Controller, Mode)
from core.transfer import ETHERNET_DATAGRAM_SIZE, Completed
from core.transfer_wire import DATA_HEADER_SIZE
from tests.test_transfer import Link, Outcome, Simulation, content_of

DATAGRAM = ETHERNET_DATAGRAM_SIZE
CHUNK = DATAGRAM - DATA_HEADER_SIZE


def bottleneck(rate: float, *, queue_ms: float = 50.0, delay: float = 0.005, loss: float = 0.0) -> Link:
    """A link of ``rate`` bytes/s whose queue holds ``queue_ms`` of it, as tbf's latency does."""
    return Link(rate=rate, queue=int(rate * queue_ms / 1000), delay=delay, loss=loss)


def send(size: int, forward: Link, *, congestion_control: bool = True, seed: int = 0,
         competitors: tuple[float, ...] = ()) -> Outcome:
    simulation = Simulation(content_of(size, seed), forward=forward, backward=Link(delay=forward.delay), seed=seed,
                            competitors=competitors,
                            sender_kwargs={"congestion_control": congestion_control, "give_up": 60.0},
                            receiver_kwargs={"give_up": 60.0})
    return simulation.run()


def goodput(outcome: Outcome, rate: float) -> float:
    """The file's bytes over the time to deliver them, as a fraction of the link rate."""
    assert isinstance(outcome.receiver_final, Completed)
    return len(outcome.data) / outcome.final_time(outcome.receiver_events) / rate


# -- the sender on a simulated bottleneck ---------------------------------------------------


@pytest.mark.parametrize("rate", [1.25e6, 6.25e6])  # 10 and 50 Mbit/s
def test_converges_to_the_link_rate_without_flooding_it(rate: float) -> None:
    size = int(rate * 3)
    link = bottleneck(rate)
    outcome = send(size, link)
    assert goodput(outcome, rate) >= 0.9
    needed = -(-size // CHUNK)
    assert link.offered <= 1.1 * needed  # datagrams offered to the queue, DATA and all
    controller = outcome.sender.controller
    assert controller is not None and controller.btlbw == pytest.approx(rate, rel=0.1)


def test_without_the_controller_the_window_floods_the_same_link() -> None:
    """What the controller fixes (issue 12): the receiver's window alone overruns the queue."""
    rate = 1.25e6
    link = bottleneck(rate)
    outcome = send(2_000_000, link, congestion_control=False)
    assert link.overflowed > link.offered / 2
    assert goodput(outcome, rate) < 0.5


def test_keeps_the_queue_short_once_started() -> None:
    rate = 1.25e6
    link = bottleneck(rate, queue_ms=200.0)
    backlog: list[tuple[float, float]] = []

    def watch(datagram: bytes, rng: random.Random, now: float) -> bytes:
        backlog.append((now, max(0.0, link.free_at - now) * rate))
        return datagram

    link.hook = watch
    send(int(rate * 5), link)
    steady = sorted(b for t, b in backlog if t > 1.0)
    assert steady, "the transfer ended during Startup"
    # against 200 ms it could hold: 20 ms of the link in the median (a pacing burst is 10 ms,
    # the ACK delay 5), 40 ms at worst (probing)
    assert steady[len(steady) // 2] <= 0.020 * rate
    assert steady[-1] <= 0.040 * rate


def test_two_flows_share_the_link() -> None:
    rate = 1.25e6
    outcome = send(int(rate * 8), bottleneck(rate), competitors=(1.5,))
    first, second = outcome, outcome.others[0]
    start, end = 3.0, min(first.final_time(first.receiver_events), second.final_time(second.receiver_events))
    assert end - start >= 2.0
    shares = [o.received_between(start, end) / ((end - start) * rate) for o in (first, second)]
    assert sum(shares) >= 0.85
    assert min(shares) >= 0.2, shares


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# random loss below LOSS_THRESHOLD (more is taken for a full queue)
@given(loss=st.floats(0.0, 0.01), rate=st.sampled_from([1.25e6, 6.25e6]), seed=st.integers(0, 2**16))
def test_random_loss_does_not_collapse_the_rate(loss: float, rate: float, seed: int) -> None:
    link = bottleneck(rate, loss=loss)
    outcome = send(int(rate * 2), link, seed=seed)
    assert goodput(outcome, rate) >= 0.8
    assert outcome.data == content_of(int(rate * 2), seed)


# -- the model on its own -------------------------------------------------------------------


def test_the_pacer_releases_a_burst_then_wakes_at_the_rate() -> None:
    controller = Controller(1_000, 0.0)
    controller.on_send(controller.allowance(), 0, 0.0, app_limited=False)  # the initial window
    assert controller.allowance() == 0
    wake = controller.next_send_time()
    quantum = max(1_000, controller.pacing_rate * SEND_QUANTUM)
    assert wake == pytest.approx(quantum / controller.pacing_rate, abs=2e-6)
    controller.advance(wake)
    assert controller.allowance() >= quantum
    controller.advance(wake + 10.0)  # a long idle time adds one burst, not ten seconds' worth
    assert controller.allowance() <= max(2_000, controller.pacing_rate * PACING_BURST) + 1


@pytest.mark.parametrize("rate", [1e5, 1e7])  # below and above a datagram per millisecond
def test_the_pacer_lets_a_quantum_go_at_once(rate: float) -> None:
    """A millisecond's worth, at least a datagram; not a datagram at a time: a loop woken per
    datagram spends its CPU on turns and system calls instead of data (on loopback, where
    the CPU is the bottleneck)."""
    controller = Controller(1_000, 0.0)
    controller.on_send(controller.allowance(), 0, 0.0, app_limited=False)  # the initial window
    controller.pacing_rate = rate  # as the model sets it on a path of that rate
    quantum = max(1_000, rate * SEND_QUANTUM)
    wake = controller.next_send_time()
    assert wake == pytest.approx(quantum / rate, abs=2e-6)
    controller.advance(wake * 0.95)  # short of the quantum (at 1e7 B/s by then 9 datagrams' worth)
    assert controller.allowance() == 0
    controller.advance(wake)
    assert quantum <= controller.allowance() <= quantum + rate * 2e-6


def feed_acks(controller: Controller, rate: float, rtt: float | Callable[[Controller], float], start: float,
              seconds: float, *, lose_every: int = 0, modes: set[Mode] | None = None, lump: float = 0.0) -> float:
    """Drive the model as a path of ``rate`` bytes/s and ``rtt`` would: one 1,000-byte
    datagram per 1/rate while the window allows, each acknowledged one rtt later (``rtt``
    may instead give it from the controller's state when the datagram is sent); every
    ``lose_every``-th is lost (and counted resent). ``lump``: ACKs arrive only every so many
    seconds, all that are due at once (a receiver that is not scheduled meanwhile)."""
    now, sent = start, 0
    step = 1_000 / rate
    pending: list[tuple[float, object]] = []
    while now < start + seconds:
        if 1_000 * (len(pending) + 1) <= controller.cwnd:
            sent += 1
            if lose_every and sent % lose_every == 0:
                controller.on_resend(1_000, now)
            state = controller.on_send(1_000, 1_000 * len(pending), now, app_limited=False)
            pending.append((now + (rtt(controller) if callable(rtt) else rtt), state))
        arrive = (now // lump) * lump if lump else now
        while pending and pending[0][0] <= arrive:
            _due, sample = pending.pop(0)
            controller.on_ack(now, 1_000, sample, now - sample.sent, 1_000 * len(pending))  # type: ignore[attr-defined]
            if modes is not None:
                modes.add(controller.mode)
        now += step
    return now


def test_startup_finds_the_rate_then_drains_and_probes() -> None:
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    feed_acks(controller, 1e6, 0.02, 0.0, 2.0)
    assert controller.mode is Mode.PROBE_BW
    assert controller.btlbw == pytest.approx(1e6, rel=0.05)
    assert controller.min_rtt == pytest.approx(0.02)
    assert controller.bdp() == pytest.approx(20_000, rel=0.05)


def test_probe_rtt_comes_when_the_minimum_is_old() -> None:
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    modes: set[Mode] = set()
    now = feed_acks(controller, 1e6, 0.02, 0.0, 1.0)
    # a queue now adds 5 ms: the 20 ms minimum ages, and ProbeRTT measures it again
    now = feed_acks(controller, 1e6, 0.025, now, MIN_RTT_LIFETIME + 1.0, modes=modes)
    assert Mode.PROBE_RTT in modes and controller.mode is Mode.PROBE_BW
    # one ProbeRTT finding a longer RTT (another flow's queue, perhaps) leaves the minimum...
    assert controller.min_rtt == pytest.approx(0.02)
    # ...until the old minimum is MIN_RTT_WINDOW old
    feed_acks(controller, 1e6, 0.025, now, MIN_RTT_WINDOW - MIN_RTT_LIFETIME)
    assert controller.min_rtt == pytest.approx(0.025)


def test_startups_minimum_rtt_is_measured_again_soon_after_drain() -> None:
    # Another flow's queue stood on the path when this one started (Startup measures 20 ms)
    # and shrank once this flow took its share: with this flow's own queue on top the RTT
    # stays above 20 ms, and only ProbeRTT, which drains that queue, finds the 15 ms below.
    rtt_in = {Mode.STARTUP: 0.02, Mode.DRAIN: 0.02, Mode.PROBE_BW: 0.022, Mode.PROBE_RTT: 0.015}
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    feed_acks(controller, 1e6, lambda c: rtt_in[c.mode], 0.0, FIRST_PROBE_RTT_AFTER + 1.0)
    assert controller.min_rtt == pytest.approx(0.015, abs=0.0015)  # ACKs are seen a datagram apart


def test_the_delayed_ack_is_counted_once_in_the_window() -> None:
    # The receiver holds each ACK up to 5 ms: ACKs come in lumps of 5 ms of data, which the
    # BDP already covers (its delay includes the ACK delay); only a lump beyond that widens
    # the window.
    controller = Controller(1_000, 0.0, ack_delay=0.005)
    feed_acks(controller, 1e6, 0.02, 0.0, 2.0, lump=0.005)
    assert controller.extra_acked >= 4_000  # each lump is a delayed ACK's worth
    assert controller.cwnd <= CWND_GAIN * controller.bdp() + 1_500  # a datagram of rounding
    lumpier = Controller(1_000, 0.0, ack_delay=0.005)
    feed_acks(lumpier, 1e6, 0.02, 0.0, 2.0, lump=0.015)
    assert lumpier.cwnd >= CWND_GAIN * lumpier.bdp() + 8_000  # the 10 ms beyond it


def test_acks_arriving_in_lumps_widen_the_window_by_a_lump() -> None:
    smooth = Controller(1_000, 0.0, ack_delay=0.0)
    feed_acks(smooth, 1e6, 0.02, 0.0, 2.0)
    lumpy = Controller(1_000, 0.0, ack_delay=0.0)
    feed_acks(lumpy, 1e6, 0.02, 0.0, 2.0, lump=0.015)
    assert lumpy.btlbw == pytest.approx(1e6, rel=0.1)
    assert smooth.extra_acked <= 3_000  # a few datagrams of rounding
    assert lumpy.extra_acked >= 10_000  # about 15 ms of the rate at once
    assert lumpy.cwnd >= CWND_GAIN * lumpy.bdp() + lumpy.extra_acked - 1


def test_the_probing_phase_has_room_in_the_window_to_probe() -> None:
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    now = feed_acks(controller, 1e6, 0.02, 0.0, 1.0)
    windows: dict[float, set[float]] = {}  # pacing gain -> window / BDP seen with it

    def seen(c: Controller) -> float:
        """The path's RTT, noting the window at each datagram sent in ProbeBW's phases."""
        if c.mode is Mode.PROBE_BW:
            gain = round(c.pacing_rate / c.btlbw, 2)
            windows.setdefault(gain, set()).add(round((c.cwnd - c.extra_acked) / c.bdp(), 2))
        return 0.02

    # a second of ACKs, seen at every datagram sent (feed_acks's source sends at the path's
    # rate, so it never has 1.25 BDP in flight and the probing phase it reaches holds)
    feed_acks(controller, 1e6, seen, now, 1.0)
    assert min(windows[1.25]) >= 1.25  # as much more in flight as the pacing gain sends


def test_heavy_loss_caps_the_window_and_the_cap_grows_back() -> None:
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    now = feed_acks(controller, 1e6, 0.02, 0.0, 1.0)
    uncapped = controller.cwnd
    now = feed_acks(controller, 1e6, 0.02, now, 0.1, lose_every=10)  # 10%: a full queue
    assert controller.inflight_hi < uncapped and controller.cwnd <= controller.inflight_hi
    assert controller.inflight_hi <= LOSS_BACKOFF * (uncapped + 10_000)
    feed_acks(controller, 1e6, 0.02, now, 1.0)
    assert controller.cwnd >= uncapped * 0.9


def test_light_random_loss_leaves_the_window_alone() -> None:
    controller = Controller(1_000, 0.0, ack_delay=0.0)
    now = feed_acks(controller, 1e6, 0.02, 0.0, 1.0)
    feed_acks(controller, 1e6, 0.02, now, 2.0, lose_every=100)  # 1%
    assert controller.inflight_hi == float("inf")
    assert controller.btlbw == pytest.approx(1e6, rel=0.1)


# -- a real link --------------------------------------------------------------------------


def test_a_real_shaped_link_is_used_without_flooding_it(tmp_path: Path) -> None:
    """The engine over real sockets through a 10 Mbit/s tbf-shaped veth between two
    namespaces (bench/shaped_link.py measures the same at full size)."""
    why = shaped.missing_tools()
    if why:
        pytest.skip(f"a shaped link between namespaces {why}")
    source = tmp_path / "file.bin"
    write_random_file(source, 2 * 2**20)
    out = tmp_path / "out"
    out.mkdir()
    with shaped.shaped_link("10mbit", tag="t") as namespaces:
        result = shaped.transfer(namespaces, source, out, congestion_control=True)
    assert result["completed"]
    assert (out / "received").read_bytes() == source.read_bytes()
    assert result["offered"] <= 1.2  # the window alone offered 23 times what was needed here
    assert result["bytes"] / result["seconds"] >= 0.5 * 10e6 / 8


def test_the_shared_cases_anchor_measures_two_tcp_flows_side_by_side() -> None:
    """bench/shaped_link.py's anchor: a second TCP flow joins a long-running one on the shaped
    link; both rates are measured over the same seconds and together fill the link."""
    why = shaped.missing_tools()
    if why:
        pytest.skip(f"a shaped link between namespaces {why}")
    link = 10e6 / 8
    with shaped.shaped_link("10mbit", tag="a") as namespaces:
        anchor = shaped.beside_tcp(namespaces, "cubic", lambda: shaped.second_tcp_flow(namespaces, "cubic", 2.0))
    assert anchor["seconds"] == 2.0
    assert anchor["rate"] > 0 and anchor["tcp_rate"] > 0
    assert 0.8 * link <= anchor["rate"] + anchor["tcp_rate"] <= 1.05 * link


def test_the_report_puts_each_shared_case_beside_its_anchor() -> None:
    shared = {"case": "50 Mbit/s + TCP cubic", "goodput": 0.45, "offered": 1.0, "completed": True, "seconds": 20.0,
              "tcp_share": 0.46, "tcp_alone": 0.95, "anchor_joining": 0.04, "anchor_long": 0.90}
    lines = shaped.report([shared], congestion_control=True).splitlines()
    assert "46% (alone 95%)" in lines[2] and "met" in lines[2]
    assert lines[3].split() == ["anchor:", "a", "second", "TCP", "flow", "in", "the", "file's", "place", "for", "as",
                                "long", "got", "4%,", "the", "long-running", "one", "90%"]


def test_the_report_marks_a_case_the_hosts_steal_time_disturbed() -> None:
    case = {"case": "50 Mbit/s", "goodput": 0.83, "offered": 1.0, "completed": True, "seconds": 6.0}
    quiet, taken = ({**case, "stolen": stolen} for stolen in (0.01, 0.15))
    lines = shaped.report([quiet, taken], congestion_control=True).splitlines()
    assert "disturbed" not in lines[2]
    assert lines[3].endswith("; the host took 15% of the CPUs: disturbed")
