"""The pure decisions behind flood control and admission: a token bucket, per-address counts."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from core.admission import TOO_FAST, TOO_MANY, AddressLimits, Admission
from core.flood import TokenBucket


def test_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    for _ in range(20):
        assert bucket.wait(0.0) == 0.0
        bucket.take()
    assert bucket.wait(0.0) == pytest.approx(0.1)  # the 21st waits for its token
    assert bucket.wait(0.1) == 0.0
    bucket.take()
    assert bucket.wait(0.1) == pytest.approx(0.1)


def test_an_idle_bucket_refills_to_its_burst_only() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    bucket.wait(0.0)
    bucket.take()
    assert not bucket.full(0.0) and bucket.full(1000.0)
    bucket.wait(1000.0)
    assert bucket.tokens == 20


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    """Whatever the timing of the requests, those let through never exceed burst + rate * t."""
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    now = 0.0
    taken = 0
    for gap in gaps:
        now += gap
        while bucket.wait(now) == 0.0:
            bucket.take()
            taken += 1
        assert taken <= 20 + 10 * now + 1e-6


def test_a_bucket_needs_a_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 20, 0.0)


def test_per_address_limits() -> None:
    admission = Admission(AddressLimits(connections=3, waiting=2, per_minute=4))
    assert admission.admit("10.0.0.1", 0.0) is None
    assert admission.admit("10.0.0.1", 0.0) is None
    assert admission.admit("10.0.0.1", 0.0) == TOO_MANY  # two waiting to log in already
    assert admission.admit("10.0.0.2", 0.0) is None  # another address is another count
    admission.logged_in("10.0.0.1")
    assert admission.admit("10.0.0.1", 0.0) is None  # three at once, one logged in
    admission.logged_in("10.0.0.1")
    assert admission.admit("10.0.0.1", 0.0) == TOO_MANY  # three at once is the limit
    admission.closed("10.0.0.1", logged_in=True)
    assert admission.admit("10.0.0.1", 0.0) is None  # the fourth new connection this minute
    admission.closed("10.0.0.1", logged_in=False)
    assert admission.admit("10.0.0.1", 0.0) == TOO_FAST  # the fifth: refused ones do not count
    assert admission.admit("10.0.0.1", 15.0) is None  # a minute / 4 later, one more


def test_zero_means_no_limit() -> None:
    admission = Admission(AddressLimits(0, 0, 0))
    assert all(admission.admit("10.0.0.1", 0.0) is None for _ in range(10_000))


def test_idle_addresses_are_forgotten() -> None:
    """The table of addresses stays bounded: an address without connections whose budget is
    whole again is dropped at the next sweep."""
    admission = Admission(AddressLimits(per_minute=60))
    for i in range(5000):
        ip = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        assert admission.admit(ip, float(i)) is None
        admission.closed(ip, logged_in=False)
    assert len(admission._addresses) < 2048
