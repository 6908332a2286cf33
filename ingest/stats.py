"""Counters: plain integers and dicts, written on the hot path, read at scrape time.

The event loop is single-threaded, so no locks: every update happens inside
one callback, and between callbacks the accounting identity holds::

    received + spool_recovered
        == published + unconfirmed + rejected + dropped + queued + in_flight + spooled_now

(``spooled_now`` is the spool's current event count; without a spool, or
with one that started empty, ``spool_recovered`` is 0. ``unconfirmed``: events
of a Publish request the drain deadline cancelled before Pub/Sub answered,
without a spool to keep them: maybe published, maybe not.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

# Seconds; spans a local emulator (sub-ms) to a slow retry storm (a minute).
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """A lock-free histogram for the event loop thread: observed per request
    or per batch, never per event. Exported cumulatively at scrape time."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)], ending with ("+Inf", count)."""
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


def _counter() -> defaultdict[str, int]:
    return defaultdict(int)


@dataclass
class Stats:
    """Counters owned by the pipeline. Labels are bounded: listener labels come
    from configuration, reasons and codes from fixed vocabularies."""

    datagrams_received: defaultdict[str, int] = field(default_factory=_counter)  # by listener
    events_received: defaultdict[str, int] = field(default_factory=_counter)  # by listener
    # The part of events_received that is not JSON, by (listener, format):
    # receive/dialects.py's formats, and "unknown" (rejected before being looked at).
    # JSON's share is the rest, so the plain path counts nothing more.
    events_by_format: defaultdict[tuple[str, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    datagrams_ignored: defaultdict[str, int] = field(default_factory=_counter)  # by reason
    rejected: defaultdict[str, int] = field(default_factory=_counter)  # events, by reason
    dropped: defaultdict[str, int] = field(default_factory=_counter)  # events, by reason
    publish_requests: defaultdict[str, int] = field(default_factory=_counter)  # by gRPC code
    publish_retries: defaultdict[str, int] = field(default_factory=_counter)  # by gRPC code
    # The same requests by (topic ID, gRPC code): topics come only from the
    # configuration, codes from grpc.StatusCode, so the labels are bounded.
    publish_requests_by_topic: defaultdict[tuple[str, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    attributes_skipped: defaultdict[str, int] = field(default_factory=_counter)  # by reason
    config_reloads: defaultdict[str, int] = field(default_factory=_counter)  # ok, error
    published: int = 0
    # The same events by topic ID: --topic, and the --route topics (bounded:
    # they come only from the configuration).
    published_by_topic: defaultdict[str, int] = field(default_factory=_counter)
    unconfirmed: int = 0  # sent, answer cut off by the drain deadline: fate unknown
    # The disk spool (spool/): events written to it, handed back from it to
    # the memory queue, and found in it at startup (left by an earlier run).
    spooled: int = 0
    replayed: int = 0
    spool_recovered: int = 0
    receive_errors: int = 0
    publish_latency: Histogram = field(default_factory=Histogram)
    event_latency: Histogram = field(default_factory=Histogram)

    def received_total(self) -> int:
        return sum(self.events_received.values())

    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class RejectSummary:
    """Bad input is counted, never logged per datagram: at most one summary
    line per interval, saying what was rejected since the last one."""

    def __init__(self, stats: Stats, interval_s: float = 10.0) -> None:
        self._stats = stats
        self.interval_s = interval_s
        self._seen: dict[str, int] = {}
        self._last_at: float | None = None

    def line(self, now: float) -> str | None:
        """The summary when one is due and something was rejected, else None."""
        if self._last_at is not None and now - self._last_at < self.interval_s:
            return None
        current = dict(self._stats.rejected)
        delta = {
            k: v - self._seen.get(k, 0) for k, v in current.items() if v > self._seen.get(k, 0)
        }
        if not delta:
            return None
        since = f"in the last {now - self._last_at:.0f}s" if self._last_at is not None else "so far"
        self._seen, self._last_at = current, now
        reasons = " ".join(f"{reason}={count}" for reason, count in sorted(delta.items()))
        return f"rejected {sum(delta.values())} events {since}: {reasons}"
