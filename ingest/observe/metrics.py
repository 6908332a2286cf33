"""Prometheus exposition: a collector that reads the pipeline's plain counters
at scrape time, so the hot path never touches a metrics library or a lock.

The metric names are a contract (dashboards, alerts, `ingest top`, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ingest import __version__
from ingest.config import topic_id_of
from ingest.observe.health import Verdict
from ingest.pipeline.queue import Bounded
from ingest.receive import kernel
from ingest.receive.dialects import JSON, UNKNOWN
from ingest.spool import Spool
from ingest.stats import Histogram, Stats
from ingest.systemd import Notifier
from ingest.vocabulary import Drop, Ignore, Reject, Skip


class ListenerView(Protocol):
    label: str
    kind: str
    udp_inode: int | None
    rcvbuf_granted: int | None
    problem: str | None

    @property
    def input_formats(self) -> Iterable[str]: ...  # --input-formats, as config lists them

    @property
    def gelf_pending(self) -> tuple[int, int] | None: ...  # (messages, bytes); None: no GELF


class PipelineView(Protocol):
    """What the collector reads; the daemon provides it (view.DaemonView)."""

    stats: Stats
    spool: Spool | None
    notifier: Notifier

    @property
    def queue(self) -> Bounded: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def listener_views(self) -> Iterable[ListenerView]: ...

    @property
    def topic_path(self) -> str: ...  # --topic's: topic_paths[0]

    @property
    def topic_paths(self) -> tuple[str, ...]: ...  # every one it may publish to, --topic's first

    @property
    def udp_rcvbuf_requested(self) -> int: ...

    def verdict(self) -> Verdict: ...

    def outage_s(self) -> float: ...


# Reasons exported at 0 before they first happen, so rates and alerts work.


def _counter(
    name: str, doc: str, label: str, values: Mapping[str, int], known: Iterable[str] = ()
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    merged = dict.fromkeys(known, 0)
    merged.update(values)
    for key, value in sorted(merged.items()):
        family.add_metric([key], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name,
        doc,
        buckets=[(le, float(count)) for le, count in hist.cumulative()],
        sum_value=hist.sum,
    )


class IngestCollector(Collector):
    def __init__(self, view: PipelineView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        stats = view.stats
        # Read once, so every family of one scrape names the same topics and listeners.
        topic_paths = view.topic_paths
        listeners = list(view.listener_views)
        yield from _info(topic_paths)
        yield from _events(stats, listeners, topic_paths)
        yield from _publishing(stats, topic_paths)
        yield from _queue(view)
        yield from _spool_metrics(view.spool, stats)
        yield from _service(view)
        yield from _listeners(view, listeners)
        yield from _health(view.verdict(), topic_paths)


def _info(topic_paths: Iterable[str]) -> Iterator[Metric]:
    info = GaugeMetricFamily("ingest_build_info", "ingest version", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    topic = GaugeMetricFamily(
        "ingest_topic_info",
        "the Pub/Sub topics published to, one series each: --topic's first, then the "
        "--route topics'",
        labels=["topic"],
    )
    for path in topic_paths:
        topic.add_metric([path], 1)
    yield topic


def _events(
    stats: Stats, listeners: list[ListenerView], topic_paths: Iterable[str]
) -> Iterator[Metric]:
    """Where each event went: received, ignored, rejected, dropped, published."""
    yield _counter(
        "ingest_datagrams_received",
        "datagrams read from a listener",
        "listener",
        stats.datagrams_received,
        [item.label for item in listeners],
    )
    yield _received_by_format(stats, listeners)
    yield _counter(
        "ingest_datagrams_ignored",
        "datagrams without any event: empty or blank, or GELF chunks of no live message",
        "reason",
        stats.datagrams_ignored,
        tuple(Ignore),
    )
    yield _counter(
        "ingest_events_rejected",
        "events refused as invalid input, never forwarded",
        "reason",
        stats.rejected,
        tuple(Reject),
    )
    yield _counter(
        "ingest_events_dropped",
        "accepted events lost, by reason",
        "reason",
        stats.dropped,
        tuple(Drop),
    )
    yield _published(stats, topic_paths)
    unconfirmed = CounterMetricFamily(
        "ingest_events_unconfirmed",
        "events whose Publish request the drain deadline cancelled before Pub/Sub "
        "answered, with no spool to keep them: maybe published, maybe not",
    )
    unconfirmed.add_metric([], stats.unconfirmed)
    yield unconfirmed


def _publishing(stats: Stats, topic_paths: Iterable[str]) -> Iterator[Metric]:
    """Publish RPCs, what they left off, reloads, receive errors, latencies."""
    yield _counter(
        "ingest_publish_requests",
        "Publish RPCs by gRPC status code",
        "code",
        stats.publish_requests,
        ("OK",),
    )
    yield _publish_requests_by_topic(stats, topic_paths)
    yield _counter(
        "ingest_publish_retries",
        "Publish RPCs retried, by the gRPC code that failed them",
        "code",
        stats.publish_retries,
    )
    yield _counter(
        "ingest_attributes_skipped",
        "attributes left off a message (the message is published): the event's field "
        "is an object or an array, or its value is over 1024 bytes",
        "reason",
        stats.attributes_skipped,
        tuple(Skip),
    )
    yield _counter(
        "ingest_config_reloads",
        "SIGHUP reloads of the configuration: ok (applied), error (refused: the old "
        "configuration keeps running)",
        "result",
        stats.config_reloads,
        ("ok", "error"),
    )
    errors = CounterMetricFamily("ingest_receive_errors", "socket receive errors")
    errors.add_metric([], stats.receive_errors)
    yield errors
    yield _histogram(
        "ingest_publish_latency_seconds", "duration of one Publish RPC", stats.publish_latency
    )
    yield _histogram(
        "ingest_event_latency_seconds",
        "datagram received -> publish acknowledged (each batch's oldest and newest event)",
        stats.event_latency,
    )


def _queue(view: PipelineView) -> Iterator[Metric]:
    queue = view.queue
    yield _gauge("ingest_queue_events", "events in the memory queue", queue.events)
    yield _gauge("ingest_queue_bytes", "bytes in the memory queue", queue.bytes)
    yield _gauge("ingest_queue_capacity_events", "memory queue bound, events", queue.max_events)
    yield _gauge("ingest_queue_capacity_bytes", "memory queue bound, bytes", queue.max_bytes)
    yield _gauge(
        "ingest_inflight_events", "events taken by publishers, not yet resolved", view.in_flight
    )


def _service(view: PipelineView) -> Iterator[Metric]:
    """sd_notify (only under systemd: NOTIFY_SOCKET set) and the outage clock."""
    if view.notifier.enabled:
        for outcome, count in (
            ("sent", view.notifier.sent),
            ("dropped", view.notifier.dropped),
        ):
            notify = CounterMetricFamily(
                f"ingest_sd_notify_{outcome}",
                f"sd_notify datagrams {outcome} (dropped: the notify socket's queue was full)",
            )
            notify.add_metric([], count)
            yield notify
    yield _gauge(
        "ingest_outage_seconds",
        "how long Pub/Sub has not been accepting publishes; 0 when healthy",
        view.outage_s(),
    )


def _listeners(view: PipelineView, listeners: list[ListenerView]) -> Iterator[Metric]:
    """Each listener's socket: up, kernel drops, SO_RCVBUF, GELF reassembly;
    and the host's unix datagram queue length."""
    drops = kernel.udp_drops_by_inode()
    kernel_drops = CounterMetricFamily(
        "ingest_kernel_drops",
        "datagrams the kernel dropped on a UDP listener before ingest read them",
        labels=["listener"],
    )
    rcvbuf = GaugeMetricFamily(
        "ingest_udp_rcvbuf_bytes", "SO_RCVBUF the kernel granted", labels=["listener"]
    )
    up = GaugeMetricFamily(
        "ingest_listener_up", "1 while the listener can receive", labels=["listener"]
    )
    for item in listeners:
        up.add_metric([item.label], 0 if item.problem else 1)
        if item.udp_inode is not None:
            kernel_drops.add_metric([item.label], drops.get(item.udp_inode, 0))
        if item.rcvbuf_granted is not None:
            rcvbuf.add_metric([item.label], item.rcvbuf_granted)
    yield kernel_drops
    yield rcvbuf
    yield _gauge(
        "ingest_udp_rcvbuf_requested_bytes",
        "SO_RCVBUF asked for (--udp-rcvbuf-bytes); a lower grant means lost bursts",
        view.udp_rcvbuf_requested,
    )
    yield up
    pending_messages = GaugeMetricFamily(
        "ingest_gelf_pending_messages",
        "chunked GELF messages awaiting more chunks",
        labels=["listener"],
    )
    pending_bytes = GaugeMetricFamily(
        "ingest_gelf_pending_bytes",
        "memory held by chunked GELF messages awaiting more chunks (bounded)",
        labels=["listener"],
    )
    for item in listeners:
        pending = item.gelf_pending
        if pending is not None:
            pending_messages.add_metric([item.label], pending[0])
            pending_bytes.add_metric([item.label], pending[1])
    yield pending_messages
    yield pending_bytes
    qlen = kernel.unix_max_dgram_qlen()
    if qlen is not None:
        yield _gauge(
            "ingest_unix_max_dgram_qlen",
            "net.unix.max_dgram_qlen: datagrams a unix socket queues before senders get EAGAIN",
            qlen,
        )


def _health(verdict: Verdict, topic_paths: Iterable[str]) -> Iterator[Metric]:
    failing = GaugeMetricFamily(
        "ingest_topic_failing",
        "1 while /healthz names the topic as failing: its latest publish failed (until "
        "one succeeds), or its latest probe while idle",
        labels=["topic"],
    )
    for topic_id in _topic_ids(topic_paths):
        failing.add_metric([topic_id], 1 if topic_id in verdict.failing_topics else 0)
    yield failing
    yield _gauge("ingest_healthy", "1 when /healthz answers 200", 1 if verdict.healthy else 0)


def _received_by_format(stats: Stats, listeners: Iterable[ListenerView]) -> CounterMetricFamily:
    """Events read from each listener by the format they were taken for.
    Stats keep the formats other than JSON (the plain path counts nothing
    more); JSON's share is the rest of the listener's events."""
    family = CounterMetricFamily(
        "ingest_events_received",
        "events read from a listener, by format: json, gelf, syslog, statsd, or unknown "
        "(rejected before being looked at: oversized, or from a denied sender). An event "
        "is a JSON line, a GELF message, a syslog message or a statsd sample",
        labels=["listener", "format"],
    )
    by_format = stats.events_by_format
    formats_of = {item.label: tuple(item.input_formats) for item in listeners}
    for label in dict.fromkeys([*formats_of, *stats.events_received]):
        # The accepted formats and unknown from the start; a format turned
        # away (format_disabled) once it has events.
        counts = dict.fromkeys((*formats_of.get(label, ()), UNKNOWN), 0)
        counts.update((fmt, n) for (where, fmt), n in by_format.items() if where == label)
        counts[JSON] = 0
        counts[JSON] = stats.events_received.get(label, 0) - sum(counts.values())
        for fmt, count in counts.items():
            family.add_metric([label, fmt], count)
    return family


def _topic_ids(topic_paths: Iterable[str]) -> list[str]:
    return [topic_id_of(path) for path in topic_paths]


def _publish_requests_by_topic(stats: Stats, topic_paths: Iterable[str]) -> CounterMetricFamily:
    """Publish RPCs by topic ID and gRPC code; each configured topic's OK
    from the start. Bounded: topics come from the configuration, codes from
    gRPC's fixed set."""
    family = CounterMetricFamily(
        "ingest_topic_publish_requests",
        "Publish RPCs by topic ID (--topic and the --route topics) and gRPC status code",
        labels=["topic", "code"],
    )
    counts = {(topic_id, "OK"): 0 for topic_id in _topic_ids(topic_paths)}
    counts.update(stats.publish_requests_by_topic)
    for (topic_id, code), count in counts.items():
        family.add_metric([topic_id, code], count)
    return family


def _published(stats: Stats, topic_paths: Iterable[str]) -> CounterMetricFamily:
    """Events Pub/Sub acknowledged, by topic ID. Every configured topic is
    exported, at 0 until something is published to it, --topic's first. The
    label set is bounded: topics come only from the configuration (--topic and
    the --route topics), never from events."""
    family = CounterMetricFamily(
        "ingest_events_published",
        "events Pub/Sub acknowledged, by topic ID (--topic and the --route topics: "
        "bounded by the configuration)",
        labels=["topic"],
    )
    counts = dict.fromkeys(_topic_ids(topic_paths), 0)
    counts.update(stats.published_by_topic)
    for topic_id, count in counts.items():
        family.add_metric([topic_id], count)
    return family


def _spool_metrics(spool: Spool | None, stats: Stats) -> Iterator[Metric]:
    """Exported at 0 without a spool, so the accounting identity reads the
    same either way."""
    yield _gauge("ingest_spool_events", "events in the disk spool", spool.events if spool else 0)
    yield _gauge(
        "ingest_spool_bytes", "bytes of spool segments on disk", spool.bytes if spool else 0
    )
    yield _gauge("ingest_spool_segments", "spool segment files", spool.segments if spool else 0)
    for name, doc, number in (
        ("ingest_events_spooled", "events written to the disk spool", stats.spooled),
        ("ingest_events_replayed", "events moved from the spool back to the queue", stats.replayed),
        (
            "ingest_spool_recovered_events",
            "events found in the spool at startup, left by an earlier run",
            stats.spool_recovered,
        ),
        (
            "ingest_spool_corrupt_records",
            "damaged spool records (torn writes, corruption) skipped",
            spool.corrupt_records if spool else 0,
        ),
    ):
        family = CounterMetricFamily(name, doc)
        family.add_metric([], number)
        yield family


def build_registry(view: PipelineView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngestCollector(view))
    ProcessCollector(registry=registry)
    return registry
