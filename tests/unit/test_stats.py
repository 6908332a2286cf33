"""Counters' helpers: the lock-free histogram and the reject summary."""

from __future__ import annotations

from ingest.stats import LATENCY_BUCKETS_S, Histogram, RejectSummary, Stats


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    hist = Histogram()
    for value in (0.0001, 0.003, 0.003, 7.0, 1000.0):
        hist.observe(value)
    buckets = dict(hist.cumulative())
    assert buckets["0.0005"] == 1
    assert buckets["0.005"] == 3
    assert buckets["10.0"] == 4
    assert buckets[repr(LATENCY_BUCKETS_S[-1])] == 4  # 1000 s is above every bound
    assert buckets["+Inf"] == 5 == hist.count
    assert abs(hist.sum - 1007.0061) < 1e-9


def test_reject_summary_is_one_line_per_interval_with_the_deltas() -> None:
    stats = Stats()
    summary = RejectSummary(stats, interval_s=10.0)
    assert summary.line(0.0) is None  # nothing rejected: nothing to say
    stats.rejected["invalid_json"] += 3
    stats.rejected["not_object"] += 1
    assert summary.line(1.0) == "rejected 4 events so far: invalid_json=3 not_object=1"
    stats.rejected["invalid_json"] += 2
    assert summary.line(5.0) is None  # within the interval: held back, not lost
    assert summary.line(11.0) == "rejected 2 events in the last 10s: invalid_json=2"
    assert summary.line(30.0) is None  # nothing new
