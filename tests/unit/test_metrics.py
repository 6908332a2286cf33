"""/metrics exposition pinned byte for byte: a state with every counter
non-zero, two topics (one failing), a spool, three listeners and sd_notify on,
rendered by the collector alone (the process collector's numbers move)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingest.observe.health import Verdict
from ingest.observe.metrics import IngestCollector
from ingest.receive import kernel
from ingest.stats import Stats
from ingest.vocabulary import Drop, Ignore, Reject, Skip
from tools.testing.views import Listener, Notifier, Spool, View

UDP = "udp:127.0.0.1:5140"
UNIX = "unix:/run/ingest/ingest.sock"
GELF = "udp:127.0.0.1:12201"


def _view() -> View:
    """Every number set."""
    view = View(
        stats=_stats(),
        listener_views=[
            Listener(UDP, "udp", 1001, 32 << 20, None, ("json", "statsd"), None),
            Listener(UNIX, "unix", None, None, "socket gone", ("json",), None),
            Listener(GELF, "udp", 1002, 4 << 20, None, ("gelf",), (2, 8_192)),
        ],
        topic_paths=("projects/p/topics/events", "projects/p/topics/errors"),
        spool=Spool(events=41, bytes=40_960, segments=3, corrupt_records=2),
        notifier=Notifier(enabled=True, sent=17, dropped=1),
        in_flight=7,
        udp_rcvbuf_requested=64 << 20,
        health=Verdict(False, ("topic errors failing: UNAVAILABLE",), ("errors",)),
        outage=12.5,
    )
    view.queue.events, view.queue.bytes = 12, 3_456
    return view


def _stats() -> Stats:
    stats = Stats()
    for n, label in enumerate((UDP, UNIX, GELF), start=1):
        stats.datagrams_received[label] += 100 * n
        stats.events_received[label] += 150 * n
    stats.events_by_format[(UDP, "statsd")] += 40
    stats.events_by_format[(UDP, "unknown")] += 3
    stats.events_by_format[(UDP, "syslog")] += 5  # format_disabled: still exported
    stats.events_by_format[(GELF, "gelf")] += 440
    for n, reason in enumerate(Ignore, start=1):
        stats.datagrams_ignored[reason] += n
    for n, reason in enumerate(Reject, start=1):
        stats.rejected[reason] += n
    for n, reason in enumerate(Drop, start=1):
        stats.dropped[reason] += n
    for n, reason in enumerate(Skip, start=1):
        stats.attributes_skipped[reason] += n
    stats.publish_requests.update({"OK": 30, "UNAVAILABLE": 4})
    stats.publish_retries["UNAVAILABLE"] += 4
    stats.publish_requests_by_topic.update(
        {("events", "OK"): 25, ("errors", "OK"): 5, ("errors", "UNAVAILABLE"): 4}
    )
    stats.config_reloads.update({"ok": 2, "error": 1})
    stats.published = 800
    stats.published_by_topic.update({"errors": 100, "events": 700})
    stats.unconfirmed = 6
    stats.spooled, stats.replayed, stats.spool_recovered = 90, 49, 8
    stats.receive_errors = 5
    for seconds in (0.0004, 0.003, 0.2, 70.0):
        stats.publish_latency.observe(seconds)
    for seconds in (0.01, 0.5, 1.5):
        stats.event_latency.observe(seconds)
    return stats


def test_exposition_is_byte_for_byte_the_pinned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "udp_drops_by_inode", lambda: {1001: 9, 4242: 1})
    monkeypatch.setattr(kernel, "unix_max_dgram_qlen", lambda: 512)
    monkeypatch.setattr("ingest.observe.metrics.__version__", "9.8.7")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngestCollector(_view()))  # type: ignore[arg-type]
    assert generate_latest(registry).decode() == EXPECTED


def test_without_spool_notify_or_qlen_the_families_are_the_pinned_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The optional parts: spool numbers at 0, no sd_notify families, no qlen."""
    monkeypatch.setattr(kernel, "udp_drops_by_inode", lambda: {})
    monkeypatch.setattr(kernel, "unix_max_dgram_qlen", lambda: None)
    view = _view()
    view.spool = None
    view.notifier = Notifier(enabled=False)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngestCollector(view))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert names == EXPECTED_NAMES_BARE
    assert "ingest_spool_events 0.0\n" in text
    assert "ingest_spool_corrupt_records_total 0.0\n" in text


# Captured from the collector before its collect() was split by family.
EXPECTED = """\
# HELP ingest_build_info ingest version
# TYPE ingest_build_info gauge
ingest_build_info{version="9.8.7"} 1.0
# HELP ingest_topic_info the Pub/Sub topics published to, one series each: --topic's first, then the --route topics'
# TYPE ingest_topic_info gauge
ingest_topic_info{topic="projects/p/topics/events"} 1.0
ingest_topic_info{topic="projects/p/topics/errors"} 1.0
# HELP ingest_datagrams_received_total datagrams read from a listener
# TYPE ingest_datagrams_received_total counter
ingest_datagrams_received_total{listener="udp:127.0.0.1:12201"} 300.0
ingest_datagrams_received_total{listener="udp:127.0.0.1:5140"} 100.0
ingest_datagrams_received_total{listener="unix:/run/ingest/ingest.sock"} 200.0
# HELP ingest_events_received_total events read from a listener, by format: json, gelf, syslog, statsd, or unknown (rejected before being looked at: oversized, or from a denied sender). An event is a JSON line, a GELF message, a syslog message or a statsd sample
# TYPE ingest_events_received_total counter
ingest_events_received_total{format="json",listener="udp:127.0.0.1:5140"} 102.0
ingest_events_received_total{format="statsd",listener="udp:127.0.0.1:5140"} 40.0
ingest_events_received_total{format="unknown",listener="udp:127.0.0.1:5140"} 3.0
ingest_events_received_total{format="syslog",listener="udp:127.0.0.1:5140"} 5.0
ingest_events_received_total{format="json",listener="unix:/run/ingest/ingest.sock"} 300.0
ingest_events_received_total{format="unknown",listener="unix:/run/ingest/ingest.sock"} 0.0
ingest_events_received_total{format="gelf",listener="udp:127.0.0.1:12201"} 440.0
ingest_events_received_total{format="unknown",listener="udp:127.0.0.1:12201"} 0.0
ingest_events_received_total{format="json",listener="udp:127.0.0.1:12201"} 10.0
# HELP ingest_datagrams_ignored_total datagrams without any event: empty or blank, or GELF chunks of no live message
# TYPE ingest_datagrams_ignored_total counter
ingest_datagrams_ignored_total{reason="empty"} 1.0
ingest_datagrams_ignored_total{reason="gelf_duplicate_chunk"} 2.0
ingest_datagrams_ignored_total{reason="gelf_late_chunk"} 3.0
# HELP ingest_events_rejected_total events refused as invalid input, never forwarded
# TYPE ingest_events_rejected_total counter
ingest_events_rejected_total{reason="decoded_too_large"} 16.0
ingest_events_rejected_total{reason="format_disabled"} 7.0
ingest_events_rejected_total{reason="gelf_incomplete"} 9.0
ingest_events_rejected_total{reason="gelf_invalid_chunk"} 12.0
ingest_events_rejected_total{reason="gelf_pending_full"} 10.0
ingest_events_rejected_total{reason="gelf_too_many_chunks"} 11.0
ingest_events_rejected_total{reason="invalid_gelf"} 8.0
ingest_events_rejected_total{reason="invalid_json"} 1.0
ingest_events_rejected_total{reason="invalid_statsd"} 14.0
ingest_events_rejected_total{reason="invalid_syslog"} 13.0
ingest_events_rejected_total{reason="invalid_utf8"} 2.0
ingest_events_rejected_total{reason="not_object"} 3.0
ingest_events_rejected_total{reason="sender_denied"} 6.0
ingest_events_rejected_total{reason="source_denied"} 5.0
ingest_events_rejected_total{reason="too_large"} 4.0
ingest_events_rejected_total{reason="unsupported_statsd"} 15.0
# HELP ingest_events_dropped_total accepted events lost, by reason
# TYPE ingest_events_dropped_total counter
ingest_events_dropped_total{reason="invalid_message"} 2.0
ingest_events_dropped_total{reason="publisher_crashed"} 4.0
ingest_events_dropped_total{reason="queue_full"} 1.0
ingest_events_dropped_total{reason="shutdown"} 3.0
ingest_events_dropped_total{reason="spool_corrupt"} 8.0
ingest_events_dropped_total{reason="spool_error"} 6.0
ingest_events_dropped_total{reason="spool_full"} 5.0
ingest_events_dropped_total{reason="spool_unwritable"} 7.0
# HELP ingest_events_published_total events Pub/Sub acknowledged, by topic ID (--topic and the --route topics: bounded by the configuration)
# TYPE ingest_events_published_total counter
ingest_events_published_total{topic="events"} 700.0
ingest_events_published_total{topic="errors"} 100.0
# HELP ingest_events_unconfirmed_total events whose Publish request the drain deadline cancelled before Pub/Sub answered, with no spool to keep them: maybe published, maybe not
# TYPE ingest_events_unconfirmed_total counter
ingest_events_unconfirmed_total 6.0
# HELP ingest_publish_requests_total Publish RPCs by gRPC status code
# TYPE ingest_publish_requests_total counter
ingest_publish_requests_total{code="OK"} 30.0
ingest_publish_requests_total{code="UNAVAILABLE"} 4.0
# HELP ingest_topic_publish_requests_total Publish RPCs by topic ID (--topic and the --route topics) and gRPC status code
# TYPE ingest_topic_publish_requests_total counter
ingest_topic_publish_requests_total{code="OK",topic="events"} 25.0
ingest_topic_publish_requests_total{code="OK",topic="errors"} 5.0
ingest_topic_publish_requests_total{code="UNAVAILABLE",topic="errors"} 4.0
# HELP ingest_publish_retries_total Publish RPCs retried, by the gRPC code that failed them
# TYPE ingest_publish_retries_total counter
ingest_publish_retries_total{code="UNAVAILABLE"} 4.0
# HELP ingest_attributes_skipped_total attributes left off a message (the message is published): the event's field is an object or an array, or its value is over 1024 bytes
# TYPE ingest_attributes_skipped_total counter
ingest_attributes_skipped_total{reason="not_scalar"} 2.0
ingest_attributes_skipped_total{reason="ordering_key_too_long"} 3.0
ingest_attributes_skipped_total{reason="value_too_long"} 1.0
# HELP ingest_config_reloads_total SIGHUP reloads of the configuration: ok (applied), error (refused: the old configuration keeps running)
# TYPE ingest_config_reloads_total counter
ingest_config_reloads_total{result="error"} 1.0
ingest_config_reloads_total{result="ok"} 2.0
# HELP ingest_receive_errors_total socket receive errors
# TYPE ingest_receive_errors_total counter
ingest_receive_errors_total 5.0
# HELP ingest_publish_latency_seconds duration of one Publish RPC
# TYPE ingest_publish_latency_seconds histogram
ingest_publish_latency_seconds_bucket{le="0.0005"} 1.0
ingest_publish_latency_seconds_bucket{le="0.001"} 1.0
ingest_publish_latency_seconds_bucket{le="0.0025"} 1.0
ingest_publish_latency_seconds_bucket{le="0.005"} 2.0
ingest_publish_latency_seconds_bucket{le="0.01"} 2.0
ingest_publish_latency_seconds_bucket{le="0.025"} 2.0
ingest_publish_latency_seconds_bucket{le="0.05"} 2.0
ingest_publish_latency_seconds_bucket{le="0.1"} 2.0
ingest_publish_latency_seconds_bucket{le="0.25"} 3.0
ingest_publish_latency_seconds_bucket{le="0.5"} 3.0
ingest_publish_latency_seconds_bucket{le="1.0"} 3.0
ingest_publish_latency_seconds_bucket{le="2.5"} 3.0
ingest_publish_latency_seconds_bucket{le="5.0"} 3.0
ingest_publish_latency_seconds_bucket{le="10.0"} 3.0
ingest_publish_latency_seconds_bucket{le="30.0"} 3.0
ingest_publish_latency_seconds_bucket{le="60.0"} 3.0
ingest_publish_latency_seconds_bucket{le="+Inf"} 4.0
ingest_publish_latency_seconds_count 4.0
ingest_publish_latency_seconds_sum 70.2034
# HELP ingest_event_latency_seconds datagram received -> publish acknowledged (each batch's oldest and newest event)
# TYPE ingest_event_latency_seconds histogram
ingest_event_latency_seconds_bucket{le="0.0005"} 0.0
ingest_event_latency_seconds_bucket{le="0.001"} 0.0
ingest_event_latency_seconds_bucket{le="0.0025"} 0.0
ingest_event_latency_seconds_bucket{le="0.005"} 0.0
ingest_event_latency_seconds_bucket{le="0.01"} 1.0
ingest_event_latency_seconds_bucket{le="0.025"} 1.0
ingest_event_latency_seconds_bucket{le="0.05"} 1.0
ingest_event_latency_seconds_bucket{le="0.1"} 1.0
ingest_event_latency_seconds_bucket{le="0.25"} 1.0
ingest_event_latency_seconds_bucket{le="0.5"} 2.0
ingest_event_latency_seconds_bucket{le="1.0"} 2.0
ingest_event_latency_seconds_bucket{le="2.5"} 3.0
ingest_event_latency_seconds_bucket{le="5.0"} 3.0
ingest_event_latency_seconds_bucket{le="10.0"} 3.0
ingest_event_latency_seconds_bucket{le="30.0"} 3.0
ingest_event_latency_seconds_bucket{le="60.0"} 3.0
ingest_event_latency_seconds_bucket{le="+Inf"} 3.0
ingest_event_latency_seconds_count 3.0
ingest_event_latency_seconds_sum 2.01
# HELP ingest_queue_events events in the memory queue
# TYPE ingest_queue_events gauge
ingest_queue_events 12.0
# HELP ingest_queue_bytes bytes in the memory queue
# TYPE ingest_queue_bytes gauge
ingest_queue_bytes 3456.0
# HELP ingest_queue_capacity_events memory queue bound, events
# TYPE ingest_queue_capacity_events gauge
ingest_queue_capacity_events 1000.0
# HELP ingest_queue_capacity_bytes memory queue bound, bytes
# TYPE ingest_queue_capacity_bytes gauge
ingest_queue_capacity_bytes 1e+06
# HELP ingest_inflight_events events taken by publishers, not yet resolved
# TYPE ingest_inflight_events gauge
ingest_inflight_events 7.0
# HELP ingest_spool_events events in the disk spool
# TYPE ingest_spool_events gauge
ingest_spool_events 41.0
# HELP ingest_spool_bytes bytes of spool segments on disk
# TYPE ingest_spool_bytes gauge
ingest_spool_bytes 40960.0
# HELP ingest_spool_segments spool segment files
# TYPE ingest_spool_segments gauge
ingest_spool_segments 3.0
# HELP ingest_events_spooled_total events written to the disk spool
# TYPE ingest_events_spooled_total counter
ingest_events_spooled_total 90.0
# HELP ingest_events_replayed_total events moved from the spool back to the queue
# TYPE ingest_events_replayed_total counter
ingest_events_replayed_total 49.0
# HELP ingest_spool_recovered_events_total events found in the spool at startup, left by an earlier run
# TYPE ingest_spool_recovered_events_total counter
ingest_spool_recovered_events_total 8.0
# HELP ingest_spool_corrupt_records_total damaged spool records (torn writes, corruption) skipped
# TYPE ingest_spool_corrupt_records_total counter
ingest_spool_corrupt_records_total 2.0
# HELP ingest_sd_notify_sent_total sd_notify datagrams sent (dropped: the notify socket's queue was full)
# TYPE ingest_sd_notify_sent_total counter
ingest_sd_notify_sent_total 17.0
# HELP ingest_sd_notify_dropped_total sd_notify datagrams dropped (dropped: the notify socket's queue was full)
# TYPE ingest_sd_notify_dropped_total counter
ingest_sd_notify_dropped_total 1.0
# HELP ingest_outage_seconds how long Pub/Sub has not been accepting publishes; 0 when healthy
# TYPE ingest_outage_seconds gauge
ingest_outage_seconds 12.5
# HELP ingest_kernel_drops_total datagrams the kernel dropped on a UDP listener before ingest read them
# TYPE ingest_kernel_drops_total counter
ingest_kernel_drops_total{listener="udp:127.0.0.1:5140"} 9.0
ingest_kernel_drops_total{listener="udp:127.0.0.1:12201"} 0.0
# HELP ingest_udp_rcvbuf_bytes SO_RCVBUF the kernel granted
# TYPE ingest_udp_rcvbuf_bytes gauge
ingest_udp_rcvbuf_bytes{listener="udp:127.0.0.1:5140"} 3.3554432e+07
ingest_udp_rcvbuf_bytes{listener="udp:127.0.0.1:12201"} 4.194304e+06
# HELP ingest_udp_rcvbuf_requested_bytes SO_RCVBUF asked for (--udp-rcvbuf-bytes); a lower grant means lost bursts
# TYPE ingest_udp_rcvbuf_requested_bytes gauge
ingest_udp_rcvbuf_requested_bytes 6.7108864e+07
# HELP ingest_listener_up 1 while the listener can receive
# TYPE ingest_listener_up gauge
ingest_listener_up{listener="udp:127.0.0.1:5140"} 1.0
ingest_listener_up{listener="unix:/run/ingest/ingest.sock"} 0.0
ingest_listener_up{listener="udp:127.0.0.1:12201"} 1.0
# HELP ingest_gelf_pending_messages chunked GELF messages awaiting more chunks
# TYPE ingest_gelf_pending_messages gauge
ingest_gelf_pending_messages{listener="udp:127.0.0.1:12201"} 2.0
# HELP ingest_gelf_pending_bytes memory held by chunked GELF messages awaiting more chunks (bounded)
# TYPE ingest_gelf_pending_bytes gauge
ingest_gelf_pending_bytes{listener="udp:127.0.0.1:12201"} 8192.0
# HELP ingest_unix_max_dgram_qlen net.unix.max_dgram_qlen: datagrams a unix socket queues before senders get EAGAIN
# TYPE ingest_unix_max_dgram_qlen gauge
ingest_unix_max_dgram_qlen 512.0
# HELP ingest_topic_failing 1 while /healthz names the topic as failing: its latest publish failed (until one succeeds), or its latest probe while idle
# TYPE ingest_topic_failing gauge
ingest_topic_failing{topic="events"} 0.0
ingest_topic_failing{topic="errors"} 1.0
# HELP ingest_healthy 1 when /healthz answers 200
# TYPE ingest_healthy gauge
ingest_healthy 0.0
"""
EXPECTED_NAMES_BARE = [
    "ingest_build_info",
    "ingest_topic_info",
    "ingest_datagrams_received_total",
    "ingest_events_received_total",
    "ingest_datagrams_ignored_total",
    "ingest_events_rejected_total",
    "ingest_events_dropped_total",
    "ingest_events_published_total",
    "ingest_events_unconfirmed_total",
    "ingest_publish_requests_total",
    "ingest_topic_publish_requests_total",
    "ingest_publish_retries_total",
    "ingest_attributes_skipped_total",
    "ingest_config_reloads_total",
    "ingest_receive_errors_total",
    "ingest_publish_latency_seconds",
    "ingest_event_latency_seconds",
    "ingest_queue_events",
    "ingest_queue_bytes",
    "ingest_queue_capacity_events",
    "ingest_queue_capacity_bytes",
    "ingest_inflight_events",
    "ingest_spool_events",
    "ingest_spool_bytes",
    "ingest_spool_segments",
    "ingest_events_spooled_total",
    "ingest_events_replayed_total",
    "ingest_spool_recovered_events_total",
    "ingest_spool_corrupt_records_total",
    "ingest_outage_seconds",
    "ingest_kernel_drops_total",
    "ingest_udp_rcvbuf_bytes",
    "ingest_udp_rcvbuf_requested_bytes",
    "ingest_listener_up",
    "ingest_gelf_pending_messages",
    "ingest_gelf_pending_bytes",
    "ingest_topic_failing",
    "ingest_healthy",
]
