"""What the dashboard knows about a daemon: one scrape reduced to a Snapshot,
and a History of them for rates, sparklines and windowed latency quantiles.

Snapshots are built from prometheus_client Metric families, which come from two
places: ``ingest top`` parses a daemon's /metrics text, ``ingest serve
--dashboard`` reads its own registry. Samples are keyed by sample name
(``..._total``, ``..._bucket``), which both agree on; family names do not (the
text parser strips ``_total``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

HISTORY_S = 65.0  # the 60 s sparkline plus a margin for sampling jitter
SPARK_S = 60
RATE_WINDOW_S = 1.0
LATENCY_WINDOW_S = 10.0  # like rate(...[10s]) under histogram_quantile

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
Pick = Callable[["Snapshot"], float]


@dataclass(frozen=True)
class Snapshot:
    """One scrape, reduced to what the dashboard shows. ``at`` is monotonic
    seconds (rates are deltas of it); ``uptime_s`` comes from the wall clock
    because process_start_time_seconds is an epoch time."""

    at: float
    start_time: float | None
    uptime_s: float | None
    version: str
    topic: str
    received: Mapping[str, int]  # events, by listener
    datagrams: Mapping[str, int]  # by listener
    rejected: Mapping[str, int]  # by reason
    dropped: Mapping[str, int]  # by reason
    published: int  # events, over every topic
    requests: Mapping[str, int]  # by gRPC code
    kernel_drops: Mapping[str, int]  # by UDP listener
    rcvbuf: Mapping[str, int]  # by UDP listener
    listener_up: Mapping[str, int]
    queue_events: int
    queue_bytes: int
    capacity_events: int
    capacity_bytes: int
    inflight: int
    unix_qlen: int | None
    healthy: bool | None
    publish_latency: Buckets
    event_latency: Buckets
    spool_events: int = 0  # events in the disk spool
    spool_recovered: int = 0  # found in the spool at startup
    unconfirmed: int = 0  # cut off at the drain deadline awaiting Pub/Sub's answer
    rcvbuf_requested: int | None = None  # --udp-rcvbuf-bytes (absent from old daemons)
    # ``published`` by topic ID, --topic's first; empty from an old daemon,
    # whose ingest_events_published_total had no topic label.
    published_by_topic: Mapping[str, int] = field(default_factory=dict)
    # ``received`` by input format (json, gelf, syslog, statsd, unknown), summed
    # over listeners; empty from an old daemon, whose
    # ingest_events_received_total had no format label.
    received_by_format: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_families(
        cls, families: Iterable[Metric], now: float, wall_time: float | None = None
    ) -> Snapshot:
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in families:
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))

        def by(name: str, label: str, *, required: bool = False) -> dict[str, int]:
            """The samples of ``name`` summed by ``label`` (over its other labels);
            a sample without ``label`` counts under "", or not at all if ``required``."""
            out: dict[str, int] = {}
            for labels, value in samples.get(name, []):
                if required and label not in labels:
                    continue
                key = labels.get(label, "")
                out[key] = out.get(key, 0) + int(value)
            return out

        def one(name: str) -> float | None:
            found = samples.get(name)
            return found[0][1] if found else None

        def label_of(name: str, label: str) -> str:
            found = samples.get(name)
            return found[0][0].get(label, "?") if found else "?"

        def buckets(name: str) -> Buckets:
            pairs = [(float(labels["le"]), value) for labels, value in samples.get(name, [])]
            return tuple(sorted(pairs))

        published = samples.get("ingest_events_published_total", [])
        start = one("process_start_time_seconds")
        wall = time.time() if wall_time is None else wall_time
        healthy = one("ingest_healthy")
        qlen = one("ingest_unix_max_dgram_qlen")
        rcvbuf_requested = one("ingest_udp_rcvbuf_requested_bytes")
        return cls(
            at=now,
            start_time=start,
            uptime_s=None if start is None else max(0.0, wall - start),
            version=label_of("ingest_build_info", "version"),
            topic=label_of("ingest_topic_info", "topic"),
            received=by("ingest_events_received_total", "listener"),
            received_by_format=by("ingest_events_received_total", "format", required=True),
            datagrams=by("ingest_datagrams_received_total", "listener"),
            rejected=by("ingest_events_rejected_total", "reason"),
            dropped=by("ingest_events_dropped_total", "reason"),
            published=int(sum(value for _, value in published)),
            published_by_topic={
                labels["topic"]: int(value) for labels, value in published if "topic" in labels
            },
            unconfirmed=int(one("ingest_events_unconfirmed_total") or 0),
            requests=by("ingest_publish_requests_total", "code"),
            kernel_drops=by("ingest_kernel_drops_total", "listener"),
            rcvbuf=by("ingest_udp_rcvbuf_bytes", "listener"),
            listener_up=by("ingest_listener_up", "listener"),
            queue_events=int(one("ingest_queue_events") or 0),
            queue_bytes=int(one("ingest_queue_bytes") or 0),
            capacity_events=int(one("ingest_queue_capacity_events") or 0),
            capacity_bytes=int(one("ingest_queue_capacity_bytes") or 0),
            inflight=int(one("ingest_inflight_events") or 0),
            spool_events=int(one("ingest_spool_events") or 0),
            spool_recovered=int(one("ingest_spool_recovered_events_total") or 0),
            unix_qlen=None if qlen is None else int(qlen),
            rcvbuf_requested=None if rcvbuf_requested is None else int(rcvbuf_requested),
            healthy=None if healthy is None else healthy >= 1,
            publish_latency=buckets("ingest_publish_latency_seconds_bucket"),
            event_latency=buckets("ingest_event_latency_seconds_bucket"),
        )

    @property
    def received_total(self) -> int:
        return sum(self.received.values())

    @property
    def unaccounted(self) -> int:
        """received + recovered from the spool - (published + unconfirmed +
        rejected + dropped + queued + in flight + spooled): 0 when every event
        is accounted for."""
        return (
            self.received_total
            + self.spool_recovered
            - (
                self.published
                + self.unconfirmed
                + sum(self.rejected.values())
                + sum(self.dropped.values())
                + self.queue_events
                + self.inflight
                + self.spool_events
            )
        )

    @property
    def listeners(self) -> list[str]:
        return sorted(set(self.received) | set(self.listener_up))


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """PromQL's histogram_quantile: linear interpolation inside the bucket
    holding rank q*count; the +Inf bucket answers with the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _increase(new: float, old: float) -> float:
    return new - old if new >= old else new  # a counter reset starts again from 0


class History:
    """Successive snapshots of one daemon over the last HISTORY_S seconds.
    A restarted daemon (a new process start time) starts a new history."""

    def __init__(self, span_s: float = HISTORY_S) -> None:
        self.span_s = span_s
        self._snaps: deque[Snapshot] = deque()

    def add(self, snap: Snapshot) -> None:
        last = self.latest
        if last is not None and (
            snap.start_time != last.start_time or snap.at <= last.at
        ):  # another process, or a clock that went backwards: old deltas mean nothing
            self._snaps.clear()
        self._snaps.append(snap)
        while self._snaps[0].at < snap.at - self.span_s:
            self._snaps.popleft()

    @property
    def latest(self) -> Snapshot | None:
        return self._snaps[-1] if self._snaps else None

    def _base(self, window_s: float) -> Snapshot | None:
        """The newest snapshot at least window_s older than the latest, else the
        oldest one; None with fewer than two snapshots."""
        if len(self._snaps) < 2:
            return None
        cutoff = self._snaps[-1].at - window_s
        for snap in reversed(self._snaps):
            if snap.at <= cutoff:
                return snap
        return self._snaps[0]

    def increase(self, pick: Pick, window_s: float) -> float:
        base, last = self._base(window_s), self.latest
        return 0.0 if base is None or last is None else _increase(pick(last), pick(base))

    def rate(self, pick: Pick, window_s: float = RATE_WINDOW_S) -> float | None:
        base, last = self._base(window_s), self.latest
        if base is None or last is None:
            return None
        return _increase(pick(last), pick(base)) / (last.at - base.at)

    def series(self, pick: Pick, seconds: int = SPARK_S) -> list[float | None]:
        """Per-second rates, oldest first; None for a second without samples."""
        if not self._snaps:
            return [None] * seconds
        end = self._snaps[-1].at
        deltas, spans = [0.0] * seconds, [0.0] * seconds
        pairs = zip(list(self._snaps), list(self._snaps)[1:], strict=False)
        for old, new in pairs:
            slot = seconds - 1 - int(end - new.at)
            if 0 <= slot < seconds:
                deltas[slot] += _increase(pick(new), pick(old))
                spans[slot] += new.at - old.at
        return [d / s if s > 0 else None for d, s in zip(deltas, spans, strict=True)]

    def quantiles(
        self, pick: Callable[[Snapshot], Buckets], window_s: float = LATENCY_WINDOW_S
    ) -> tuple[float | None, float | None, bool]:
        """(p50, p99, windowed): from bucket deltas over window_s, or, when nothing
        was observed in it, from the cumulative buckets (windowed False)."""
        last = self.latest
        if last is None:
            return None, None, False
        current, base = pick(last), self._base(window_s)
        if base is not None and len(pick(base)) == len(current):
            old = pick(base)
            delta = tuple(
                (le, _increase(n, o)) for (le, n), (_, o) in zip(current, old, strict=True)
            )
            if delta and delta[-1][1] > 0:
                return histogram_quantile(0.5, delta), histogram_quantile(0.99, delta), True
        return histogram_quantile(0.5, current), histogram_quantile(0.99, current), False
