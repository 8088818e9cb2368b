"""Congestion control with pacing for the transfer sender: a model-based controller in the
BBR family (draft-cardwell-iccrg-bbr-congestion-control), sans I/O, time passed in.

The controller keeps a model of the path -- the bottleneck bandwidth ``btlbw`` (the largest
delivery rate measured over the last ten round trips) and the round-trip propagation time
``min_rtt`` (the smallest RTT over the last ten seconds, re-measured every five) -- and
derives from it

- the **pacing rate**, ``gain * btlbw``: datagrams leave at that rate, in bursts of at most
  ten milliseconds' worth (``allowance``/``next_send_time``), so the bottleneck's queue
  never sees a window's worth at once, and of at least one millisecond's worth (BBR's send
  quantum): released a datagram at a time, a fast loop wakes per datagram or two, and on
  loopback its turns and system calls, not the data, take the CPU (measured at 1,400
  bytes: runs of 7-25 datagrams per ``sendmsg`` instead of 44, up to twice the sender's
  CPU per datagram and half again the receiver's);
- the **congestion window**, 1.25 times the bandwidth-delay product (whose delay includes
  the receiver's ACK delay) plus what ``extra_acked`` shows beyond one delayed ACK's worth;
  ``extra_acked`` is the largest lump of data recently acknowledged at once beyond what
  ``btlbw`` explains (BBR's ACK-aggregation estimate). The bytes in flight never exceed
  the window (nor the receiver's window, which stays the sender's hard cap). A receiver
  that acknowledges in lumps -- on loopback, a process that was not scheduled for a while,
  then reads a backlog -- would otherwise find its socket empty between lumps; on a
  smoothly draining link the lumps stay near one delayed ACK, and a small window leaves a
  competing TCP flow its share.

The gain moves through BBR's states: Startup (2.89: doubles the rate each round trip until
the bandwidth stops growing by 25% for three rounds), Drain (the inverse, until the queue
Startup built is gone), ProbeBW (a cycle of eight phases: 1.25 to probe for more bandwidth,
0.75 to drain what the probe queued, then six at 1.0) and ProbeRTT (every five seconds
without a new minimum RTT, half a BDP in flight for 200 ms, so every flow's queue drains and
the minimum is measured again). The first ProbeRTT comes one second after Drain: the minimum
Startup measured may hold a queue another flow kept standing when this one arrived, which
shrinks once this flow has taken its share.

Loss alone does not slow it: random loss leaves the delivery rate as it was. A round trip
(or as many as make 50 datagrams) that loses more than 2% of its datagrams, and at least
four, which is what a full queue does,
caps the data in flight at 0.7 times what was in flight then (``inflight_hi``, as in BBRv2),
never below the estimated BDP: a cluster of random losses early in Startup must not leave the
flow stuck below the link rate (the queue a full link builds sits above the BDP, so the cut
still drains it);
the cap grows back by a datagram each clean round trip (as TCP's window does, so flows that
share a full queue converge), and is lifted once it is far above the BDP.

Delivery-rate samples follow draft-cheng-iccrg-delivery-rate-estimation: each datagram
carries a ``SendState`` snapshot of the connection's delivered count when it was sent, and
when it is acknowledged the rate is the data delivered in between over the longer of the
send and the ACK intervals.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

STARTUP_GAIN = 2 / math.log(2)  # the smallest gain that doubles the delivery rate each round
# The window's gain on the BDP (what extra_acked shows beyond one delayed ACK comes on top),
# in every ProbeBW phase: as much as the probing phase's pacing gain, so a probe has room to
# send more. Measured on the shaped 50 Mbit/s link beside a long-running TCP flow
# (bench/shaped_link.py, BENCHMARKS.md), with the delayed ACK counted once and the early
# first ProbeRTT: at 1.1 one flow or the other had less than 40% in 7 runs of 12; at 1.25,
# in 16 of 62.
CWND_GAIN = 1.25
PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BTLBW_ROUNDS = 10  # the bandwidth filter's window, in round trips
MIN_RTT_LIFETIME = 5.0  # seconds; then ProbeRTT measures it again
MIN_RTT_WINDOW = 10.0  # seconds: the minimum RTT used is the smallest measured over this long
FIRST_PROBE_RTT_AFTER = 1.0  # seconds after Drain: Startup's minimum RTT is measured again
PROBE_RTT_TIME = 0.2
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
INITIAL_WINDOW = 10  # datagrams, as TCP (RFC 6928) and QUIC start
MIN_WINDOW = 4  # datagrams
PACING_BURST = 0.01  # seconds of data the pacer may release at once: what a late loop may catch up
# Seconds of data the pacer lets go at least at once (and a datagram): BBR's send quantum,
# without its 64 KB cap (one TSO packet there; here the shell cuts what it gets into GSO runs).
SEND_QUANTUM = 0.001
LOSS_THRESHOLD = 0.02  # losing more than this fraction of what was sent means a full queue...
LOSS_MIN_DATAGRAMS = 4  # ...if at least this many were lost...
LOSS_EPOCH_DATAGRAMS = 50  # ...out of at least this many (and a round trip): one random loss is not
LOSS_BACKOFF = 0.7
EXTRA_ACKED_ROUNDS = 10  # the ACK-aggregation filter's window, in round trips (as BBRv3)
_NO_CAP = math.inf


class Mode(Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


@dataclass(frozen=True, slots=True)
class SendState:
    """The connection's delivery state when a datagram was sent (the draft's P.delivered,
    P.delivered_time, P.first_sent_time, P.is_app_limited); ``sent`` is its send time."""

    delivered: int
    delivered_time: float
    first_sent_time: float
    app_limited: bool
    sent: float


class Controller:
    """Pacing rate and congestion window for one sender; every size is in bytes on the wire.

    The sender calls ``on_send`` for each batch of new datagrams (and keeps the returned
    snapshot with them), ``on_resend`` for each datagram sent again after a loss,
    ``on_ack`` for each acknowledgement that brings news, and ``advance`` whenever it learns
    the time; it may send ``min(allowance, cwnd - inflight)`` bytes now.

    ``ack_delay`` is how long the receiver may hold an ACK: the sender hears of its data one
    ``min_rtt + ack_delay`` after sending it, so the window covers that much. ``seed``
    chooses where in the ProbeBW cycle this flow starts, so that flows do not probe in step.
    """

    def __init__(self, datagram_size: int, now: float, *, ack_delay: float = 0.005, seed: int = 0) -> None:
        self.datagram_size = datagram_size
        self.mode = Mode.STARTUP
        self.btlbw = 0.0  # bytes per second
        self.min_rtt = math.inf
        self.inflight_hi = _NO_CAP
        self.pacing_rate = 0.0
        self.cwnd = INITIAL_WINDOW * datagram_size
        self._ack_delay = ack_delay
        self._rng = random.Random(seed)
        self._probe_min_rtt = math.inf  # the smallest RTT since the last ProbeRTT...
        self._min_rtt_stamp = now  # ...when it was measured (or confirmed by ProbeRTT)
        self._older_min_rtt = math.inf  # the one before it, and when it was measured
        self._older_min_rtt_stamp = now
        self._pacing_gain = STARTUP_GAIN
        # delivery-rate estimation: the draft's C.delivered, C.delivered_time, C.first_sent_time
        self.delivered = 0
        self._delivered_time = now
        self._first_sent_time = now
        self._app_limited_until = 0  # delivered count at which app-limited sampling ends
        # round trips: a round ends when a datagram sent after the last one ended is acknowledged
        self._round = 0
        self._round_end_delivered = 0
        self._round_lost = 0  # bytes found lost since the round started
        self._epoch_lost = 0  # ...and since the loss verdict was last given
        self._epoch_delivered_at_start = 0
        self._bw_samples: deque[tuple[int, float]] = deque()  # (round, rate), decreasing rates
        # ACK aggregation: data acknowledged beyond what btlbw explains since the epoch began
        self.extra_acked = 0.0
        self._extra_samples: deque[tuple[int, float]] = deque()  # (round, bytes), decreasing
        self._aggregation_start = now
        self._aggregation_delivered = 0
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._filled_pipe = False
        self._cycle_index = 0
        self._cycle_stamp = now
        self._probe_rtt_done: float | None = None
        self._probe_rtt_round = 0
        # the pacer: a token bucket of bytes, filled at the pacing rate up to one burst
        self._tokens = float(self.cwnd)  # the initial window may go at once
        self._tokens_at = now
        self._set_pacing_rate(self.cwnd / 0.001)

    # -- the pacer -------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Let the pacer's tokens accrue up to ``now``."""
        if now > self._tokens_at:
            self._tokens = min(self._burst(), self._tokens + (now - self._tokens_at) * self.pacing_rate)
            self._tokens_at = now

    def _burst(self) -> float:
        return max(2 * self.datagram_size, self.pacing_rate * PACING_BURST)

    def _quantum(self) -> float:
        return max(self.datagram_size, self.pacing_rate * SEND_QUANTUM)

    def allowance(self) -> int:
        """Bytes the pacer lets go now (as of the last ``advance``): none until a quantum
        has accrued, then all there is."""
        tokens = self._tokens
        return int(tokens) if tokens >= self._quantum() else 0

    def next_send_time(self) -> float:
        """When the pacer next lets data go: when a quantum has accrued."""
        missing = self._quantum() - self._tokens
        # a microsecond more, so the tokens then are a whole quantum despite rounding
        return self._tokens_at if missing <= 0 else self._tokens_at + missing / self.pacing_rate + 1e-6

    # -- events ----------------------------------------------------------------------------

    def on_send(self, size: int, inflight: int, now: float, *, app_limited: bool) -> SendState:
        """``size`` bytes of new data leave now with ``inflight`` bytes already out;
        ``app_limited``: the sender has nothing more to send after them."""
        self.advance(now)
        self._tokens -= size
        if inflight == 0:
            self._first_sent_time = self._delivered_time = now
        if app_limited:
            self._app_limited_until = max(self.delivered + inflight + size, 1)
        return SendState(self.delivered, self._delivered_time, self._first_sent_time,
                         self._app_limited_until > 0, now)

    def on_resend(self, size: int, now: float) -> None:
        """A datagram was found lost and is sent again now."""
        self.advance(now)
        self._tokens -= size
        self._round_lost += size
        self._epoch_lost += size

    def on_ack(self, now: float, delivered: int, sample: SendState | None, rtt: float | None, inflight: int) -> None:
        """An ACK reports ``delivered`` more bytes; ``sample``: the snapshot of the most
        recently sent datagram among them (None if it had been resent); ``rtt``: a clean RTT
        sample, if any; ``inflight``: bytes still out after it."""
        self.advance(now)
        self.delivered += delivered
        self._delivered_time = now
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        expired = now - self._min_rtt_stamp > MIN_RTT_LIFETIME
        if rtt is not None:
            self._update_min_rtt(rtt, now, expired)
        if sample is not None:
            self._first_sent_time = sample.sent
            if sample.delivered >= self._round_end_delivered:
                self._end_round(inflight)
            self._update_btlbw(sample, now)
        self._update_ack_aggregation(now, delivered)
        self._update_mode(now, inflight, expired)
        self._set_pacing_rate(self._pacing_gain * self.btlbw)
        self._set_cwnd()

    # -- the model -------------------------------------------------------------------------

    def bdp(self) -> float:
        """The bandwidth-delay product, with the receiver's ACK delay in the delay."""
        if not self.btlbw or math.isinf(self.min_rtt):
            return INITIAL_WINDOW * self.datagram_size
        return self.btlbw * (self.min_rtt + self._ack_delay)

    def _update_min_rtt(self, rtt: float, now: float, expired: bool) -> None:
        """``min_rtt``: the smallest RTT over MIN_RTT_WINDOW, from two minima (as BBRv2):
        the one since the last ProbeRTT, which starts afresh once it is MIN_RTT_LIFETIME old
        (and ProbeRTT comes to measure it again), and the one before it. A flow sharing the
        link with others may find their queue at its ProbeRTT; with the older minimum still
        in force that one measurement does not inflate the window (which would take the
        others' share) until a second ProbeRTT finds the same."""
        if rtt <= self._probe_min_rtt or (expired and self.mode is not Mode.PROBE_RTT):
            if expired and rtt > self._probe_min_rtt:
                self._older_min_rtt, self._older_min_rtt_stamp = self._probe_min_rtt, self._min_rtt_stamp
            self._probe_min_rtt = rtt
            self._min_rtt_stamp = now
        older_valid = now - self._older_min_rtt_stamp <= MIN_RTT_WINDOW
        self.min_rtt = min(self._probe_min_rtt, self._older_min_rtt) if older_valid else self._probe_min_rtt

    def _update_btlbw(self, sample: SendState, now: float) -> None:
        """One delivery-rate sample into the windowed maximum (a monotonic deque)."""
        interval = max(sample.sent - sample.first_sent_time, now - sample.delivered_time)
        if interval <= 0 or interval < self.min_rtt:
            return  # too short to measure a rate (the draft discards these)
        rate = (self.delivered - sample.delivered) / interval
        if sample.app_limited and rate < self.btlbw:
            return  # an idle sender measures itself, not the path
        self.btlbw = _windowed_max(self._bw_samples, self._round, rate, BTLBW_ROUNDS)

    def _update_ack_aggregation(self, now: float, delivered: int) -> None:
        """How much more than ``btlbw`` explains the ACKs bring at once (BBR's extra_acked).

        A receiver that acknowledges in batches (a delayed ACK, an ACK per so many
        datagrams, a process that was not scheduled for a while, then reads a backlog) makes
        the data acknowledged arrive in lumps; a window of only ``cwnd_gain * BDP`` then runs
        dry between lumps and the path idles. The largest excess over the last rounds is
        added to the window. On a smoothly draining link (tbf) the excess stays small.
        """
        expected = self.btlbw * (now - self._aggregation_start)
        if self._aggregation_delivered <= expected:  # the ACKs kept pace: a new epoch
            self._aggregation_start = now
            self._aggregation_delivered = 0
            expected = 0.0
        self._aggregation_delivered += delivered
        extra = min(self._aggregation_delivered - expected, self.cwnd)
        self.extra_acked = _windowed_max(self._extra_samples, self._round, extra, EXTRA_ACKED_ROUNDS)

    def _end_round(self, inflight: int) -> None:
        """Once per round trip: the loss verdict and Startup's check for a full pipe."""
        delivered = self.delivered - self._epoch_delivered_at_start
        lost = self._epoch_lost
        size = self.datagram_size
        if delivered + lost >= LOSS_EPOCH_DATAGRAMS * size:
            if lost >= LOSS_MIN_DATAGRAMS * size and lost > LOSS_THRESHOLD * (delivered + lost):
                self.inflight_hi = max(MIN_WINDOW * size, self.bdp(), LOSS_BACKOFF * min(self.inflight_hi, inflight + lost))
                self._filled_pipe = True  # a queue overflowed: Startup has found the limit
            self._epoch_delivered_at_start = self.delivered
            self._epoch_lost = 0
        if not self._round_lost and not math.isinf(self.inflight_hi):
            self.inflight_hi += size  # additive, as TCP grows: flows sharing the queue converge
            if self.inflight_hi > 4 * max(self.bdp(), self.cwnd):
                self.inflight_hi = _NO_CAP
        if not self._filled_pipe and not self._app_limited_until:
            if self.btlbw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self.btlbw
                self._full_bw_rounds = 0
            else:
                self._full_bw_rounds += 1
                self._filled_pipe = self._full_bw_rounds >= FULL_BW_ROUNDS
        self._round += 1
        self._round_end_delivered = self.delivered
        self._round_lost = 0

    def _update_mode(self, now: float, inflight: int, min_rtt_expired: bool) -> None:
        if self.mode is Mode.STARTUP and self._filled_pipe:
            self._enter(Mode.DRAIN, now)
        if self.mode is Mode.DRAIN and inflight <= self.bdp():
            self._enter(Mode.PROBE_BW, now)
            # Startup's minimum is due to be measured again soon (unless a later sample
            # renews it first): it may include a queue another flow kept standing when this
            # one arrived. On the shaped link beside a TCP BBR flow it was 9-12 ms where
            # ProbeRTT found 4-7 ms, and until then this flow took 80% of the link.
            self._min_rtt_stamp = min(self._min_rtt_stamp, now + FIRST_PROBE_RTT_AFTER - MIN_RTT_LIFETIME)
        if self.mode is Mode.PROBE_BW:
            self._advance_cycle(now, inflight)
        if min_rtt_expired and self.mode is not Mode.PROBE_RTT:
            self._enter(Mode.PROBE_RTT, now)
        if self.mode is Mode.PROBE_RTT:
            self._probe_rtt(now, inflight)

    def _enter(self, mode: Mode, now: float) -> None:
        self.mode = mode
        if mode is Mode.STARTUP:
            self._pacing_gain = STARTUP_GAIN
        elif mode is Mode.DRAIN:
            self._pacing_gain = 1 / STARTUP_GAIN
        elif mode is Mode.PROBE_BW:
            # any phase but the draining one, chosen at random so flows do not probe in step
            self._start_phase(self._rng.choice([i for i in range(len(PROBE_GAINS)) if i != 1]), now)
        else:
            self._pacing_gain = 1.0
            self._probe_rtt_done = None

    def _advance_cycle(self, now: float, inflight: int) -> None:
        """ProbeBW: each phase lasts one round-trip time; probing up also ends once the
        queue it builds shows (losses), draining down once the queue is gone."""
        gain = self._pacing_gain
        elapsed = now - self._cycle_stamp > self.min_rtt + self._ack_delay
        bdp = self.bdp()
        if gain > 1:
            done = elapsed and (inflight >= gain * bdp or self._round_lost > 0)
        elif gain < 1:
            done = elapsed or inflight <= bdp
        else:
            done = elapsed
        if done:
            self._start_phase((self._cycle_index + 1) % len(PROBE_GAINS), now)

    def _start_phase(self, index: int, now: float) -> None:
        """ProbeBW's phase ``index`` begins: its pacing gain, and a window with room for it."""
        self._cycle_index = index
        self._cycle_stamp = now
        self._pacing_gain = PROBE_GAINS[index]

    def _probe_rtt(self, now: float, inflight: int) -> None:
        """Hold half a BDP in flight for PROBE_RTT_TIME and at least one round trip."""
        if self._probe_rtt_done is None:
            if inflight <= self._probe_rtt_cwnd():
                self._probe_rtt_done = now + PROBE_RTT_TIME
                self._probe_rtt_round = self._round
        elif now >= self._probe_rtt_done and self._round > self._probe_rtt_round:
            self._min_rtt_stamp = now
            self._enter(Mode.PROBE_BW if self._filled_pipe else Mode.STARTUP, now)

    def _probe_rtt_cwnd(self) -> float:
        return max(MIN_WINDOW * self.datagram_size, self.bdp() / 2)

    def _set_pacing_rate(self, rate: float) -> None:
        # Startup never lowers the rate (the first samples may be small); the floor keeps
        # the pacer from stalling on a model with no samples yet.
        if rate > 0 and (self._filled_pipe or rate > self.pacing_rate):
            self.pacing_rate = max(rate, self.datagram_size / 0.1)

    def _aggregation_beyond_ack_delay(self) -> float:
        """What the window needs for ACK aggregation beyond the BDP: ``extra_acked`` less
        one delayed ACK's worth of ``btlbw``, which the BDP already covers (its delay
        includes ``ack_delay``). Counted twice, a flow alone on the shaped link kept 11-16 ms
        of it queued, and a TCP BBR flow beside it kept 23-47%."""
        return max(0.0, self.extra_acked - self.btlbw * self._ack_delay)

    def _set_cwnd(self) -> None:
        if self.mode is Mode.PROBE_RTT:
            cwnd = self._probe_rtt_cwnd()
        else:  # Startup and Drain keep Startup's gain: Drain lowers only the pacing rate
            gain = CWND_GAIN if self.mode is Mode.PROBE_BW else STARTUP_GAIN
            cwnd = gain * self.bdp() + self._aggregation_beyond_ack_delay()
        self.cwnd = int(max(MIN_WINDOW * self.datagram_size, min(cwnd, self.inflight_hi)))


def _windowed_max(samples: deque[tuple[int, float]], now_round: int, value: float, rounds: int) -> float:
    """Add ``value`` to a windowed-maximum filter (a deque of (round, value), decreasing
    values) and return the largest value of the last ``rounds`` rounds."""
    while samples and samples[-1][1] <= value:
        samples.pop()
    samples.append((now_round, value))
    while samples[0][0] <= now_round - rounds:
        samples.popleft()
    return samples[0][1]
