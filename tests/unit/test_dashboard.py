"""The dashboard on fixed snapshots: exposition text parsed with prometheus_client's
own parser, rendered to a recording Console without colour, read as text."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from ingest.config import INPUT_FORMATS
from ingest.observe.dashboard import History, InlineDashboard, Snapshot, histogram_quantile, render
from ingest.observe.metrics import build_registry
from ingest.stats import LATENCY_BUCKETS_S
from tools.testing.views import Listener, View

UDP = "udp:127.0.0.1:5140"
UNIX = "unix:/run/ingest/ingest.sock"
START = 1_700_000_000.0


def exposition(
    *,
    received: dict[str, int] | None = None,  # by listener
    by_format: dict[str, dict[str, int]] | None = None,  # the part of ``received`` not JSON
    formatless: bool = False,  # ``received`` as a daemon before dialects exported it
    published: int = 0,
    by_topic: dict[str, int] | None = None,  # instead of ``published``, to topic "t"
    unlabelled: bool = False,  # ``published`` as a daemon before routing exported it
    rejected: dict[str, int] | None = None,
    dropped: dict[str, int] | None = None,
    requests: dict[str, int] | None = None,
    queue: tuple[int, int] = (0, 0),
    capacity: tuple[int, int] = (100_000, 64 * 1024 * 1024),
    inflight: int = 0,
    kernel_drops: int = 0,
    rcvbuf: int = 32 * 1024 * 1024,
    rcvbuf_requested: int = 32 * 1024 * 1024,
    up: dict[str, int] | None = None,
    qlen: int = 1024,
    publish_latency: dict[float, int] | None = None,  # le -> cumulative count
    start: float = START,
) -> str:
    """/metrics text shaped like the daemon's (the names are the contract)."""
    received = {UDP: 0, UNIX: 0} if received is None else received
    up = up or dict.fromkeys(received, 1)
    by_topic = {"t": published} if by_topic is None else by_topic
    lines = [
        'ingest_build_info{version="9.8.7"} 1',
        *(f'ingest_topic_info{{topic="projects/p/topics/{k}"}} 1' for k in by_topic),
        f"process_start_time_seconds {start}",
        "# TYPE ingest_events_received_total counter",
        *(
            [f'ingest_events_received_total{{listener="{k}"}} {v}' for k, v in received.items()]
            if formatless
            else received_by_format(received, by_format or {})
        ),
        "# TYPE ingest_events_rejected_total counter",
        *(f'ingest_events_rejected_total{{reason="{k}"}} {v}' for k, v in (rejected or {}).items()),
        "# TYPE ingest_events_dropped_total counter",
        *(f'ingest_events_dropped_total{{reason="{k}"}} {v}' for k, v in (dropped or {}).items()),
        "# TYPE ingest_events_published_total counter",
        *(
            [f"ingest_events_published_total {published}"]
            if unlabelled
            else [f'ingest_events_published_total{{topic="{k}"}} {v}' for k, v in by_topic.items()]
        ),
        "# TYPE ingest_publish_requests_total counter",
        *(f'ingest_publish_requests_total{{code="{k}"}} {v}' for k, v in (requests or {}).items()),
        f"ingest_queue_events {queue[0]}",
        f"ingest_queue_bytes {queue[1]}",
        f"ingest_queue_capacity_events {capacity[0]}",
        f"ingest_queue_capacity_bytes {capacity[1]}",
        f"ingest_inflight_events {inflight}",
        "# TYPE ingest_kernel_drops_total counter",
        f'ingest_kernel_drops_total{{listener="{UDP}"}} {kernel_drops}',
        f'ingest_udp_rcvbuf_bytes{{listener="{UDP}"}} {rcvbuf}',
        f"ingest_udp_rcvbuf_requested_bytes {rcvbuf_requested}",
        *(f'ingest_listener_up{{listener="{k}"}} {v}' for k, v in up.items()),
        f"ingest_unix_max_dgram_qlen {qlen}",
        "ingest_healthy 1",
        "# TYPE ingest_publish_latency_seconds histogram",
    ]
    cumulative = publish_latency or {}
    running = 0
    for le in LATENCY_BUCKETS_S:
        running = cumulative.get(le, running)
        lines.append(f'ingest_publish_latency_seconds_bucket{{le="{le}"}} {running}')
    lines.append(f'ingest_publish_latency_seconds_bucket{{le="+Inf"}} {running}')
    lines.append(f"ingest_publish_latency_seconds_count {running}")
    return "\n".join(lines) + "\n"


def received_by_format(received: dict[str, int], by_format: dict[str, dict[str, int]]) -> list[str]:
    """ingest_events_received_total as the daemon exports it: every format of
    every listener, 0 until used, JSON's share the rest of the listener's events."""
    lines = []
    for listener, events in received.items():
        counts = dict.fromkeys((*INPUT_FORMATS, "unknown"), 0)
        counts.update(by_format.get(listener, {}))
        counts["json"] = events - sum(counts.values())  # counts["json"] is still 0 here
        lines += [
            f'ingest_events_received_total{{listener="{listener}",format="{fmt}"}} {n}'
            for fmt, n in counts.items()
        ]
    return lines


def snap(at: float, **kwargs: object) -> Snapshot:
    families = text_string_to_metric_families(exposition(**kwargs))  # type: ignore[arg-type]
    return Snapshot.from_families(families, now=at, wall_time=START + 3723)


def history(*snaps: Snapshot) -> History:
    out = History()
    for item in snaps:
        out.add(item)
    return out


def text_of(
    hist: History,
    reasons: list[str] | None = None,
    width: int = 120,
    height: int = 40,
    **kwargs: object,
) -> str:
    console = Console(
        record=True, width=width, height=height, force_terminal=True, color_system=None
    )
    console.print(render(hist, reasons, width=width, height=height, **kwargs))  # type: ignore[arg-type]
    return console.export_text()


def row(view: str, *cells: str) -> bool:
    """Some line holds these cells in this order, separated by blanks only."""
    pattern = r"(^|\s)" + r"\s+".join(map(re.escape, cells)) + r"(\s|$)"
    return any(re.search(pattern, line) for line in view.splitlines())


def test_totals_are_exact_with_thousands_separators() -> None:
    view = text_of(
        history(
            snap(
                1.0,
                received={UDP: 1_000_000, UNIX: 234_567},
                published=1_200_000,
                rejected={"invalid_json": 30_000, "too_large": 4_000},
                dropped={"queue_full": 500},
                queue=(60, 6000),
                inflight=7,
            )
        ),
        [],
    )
    for total in ("1,234,567", "1,200,000", "34,000", "500", "60", "7"):
        assert total in view
    assert "accounted ✓" in view
    assert "version 9.8.7" not in view and "ingest 9.8.7" in view
    assert "up 1:02:03" in view and "projects/p/topics/t" in view
    # By reason, each its own line:
    assert row(view, "received", "1,234,567", "rejected", "34,000")
    assert row(view, "published", "1,200,000", "dropped", "500")
    assert row(view, "rejected", "invalid_json", "30,000")
    assert row(view, "dropped", "queue_full", "500")


def test_an_unbalanced_identity_is_shown_as_the_difference() -> None:
    view = text_of(history(snap(1.0, received={UDP: 1005}, published=1000)), [])
    assert "UNACCOUNTED +5" in view
    assert "accounted ✓" not in view


def test_rates_come_from_two_snapshots() -> None:
    hist = history(
        snap(100.0, received={UDP: 1_000, UNIX: 0}, published=900, requests={"OK": 10}),
        snap(102.0, received={UDP: 5_000, UNIX: 1_000}, published=10_900, requests={"OK": 30}),
    )
    assert hist.rate(lambda s: s.received_total) == 2_500.0
    assert hist.rate(lambda s: s.published) == 5_000.0
    view = text_of(hist, [])
    assert row(view, "in", "2,500.0/s")
    assert row(view, "out", "5,000.0/s")
    assert row(view, UDP, "up", "2,000.0/s", "5,000")  # per listener: rate, total
    assert row(view, UNIX, "up", "500.0/s", "1,000")
    assert row(view, "OK", "30", "10.0/s")  # publish requests by code


def test_published_is_the_sum_over_topics_and_an_unlabelled_series_still_reads() -> None:
    routed = snap(1.0, by_topic={"events": 700, "errors": 300})
    assert routed.published == 1_000
    assert routed.published_by_topic == {"events": 700, "errors": 300}
    old = snap(1.0, published=42, unlabelled=True)  # a daemon from before routing
    assert old.published == 42 and old.published_by_topic == {}
    assert old.unaccounted == snap(1.0, published=42).unaccounted


def test_two_topics_get_a_row_each_with_rate_and_count() -> None:
    hist = history(
        snap(100.0, received={UDP: 100}, by_topic={"events": 100, "audit": 0}),
        snap(102.0, received={UDP: 2_600}, by_topic={"events": 2_100, "audit": 500}),
    )
    assert hist.rate(lambda s: s.published) == 1_250.0
    view = text_of(hist, [])
    assert "published by topic" in view
    assert row(view, "topic", "events/s", "published")
    assert row(view, "events", "1,000.0/s", "2,100")
    assert row(view, "audit", "250.0/s", "500")
    assert row(view, "published", "2,600")  # the totals panel: every topic
    assert row(view, "out", "1,250.0/s")
    assert "accounted ✓" in view
    lines = view.splitlines()
    first = next(i for i, line in enumerate(lines) if row(line, "events", "1,000.0/s"))
    assert row(lines[first + 1], "audit", "250.0/s")  # --topic's first, as configured
    # A small terminal gives this panel up before the others.
    small = text_of(hist, [], width=100, height=26)
    assert "published by topic" not in small and "(1 more panel: enlarge" in small
    assert "rejected / dropped by reason" in small


@pytest.mark.parametrize("width", [120, 60])
def test_one_topic_looks_as_before_routing(width: int) -> None:
    """One topic: no per-topic rows, the same screen as from a daemon whose
    ingest_events_published_total had no label."""
    kwargs: dict[str, object] = {"received": {UDP: 900, UNIX: 100}, "published": 990}
    hist = history(snap(1.0, received={UDP: 0, UNIX: 0}), snap(2.0, **kwargs))
    old = history(
        snap(1.0, received={UDP: 0, UNIX: 0}, unlabelled=True),
        snap(2.0, unlabelled=True, **kwargs),
    )
    view = text_of(hist, [], width=width)
    assert "published by topic" not in view and "more panel" not in view
    assert row(view, "published", "990")
    assert view == text_of(old, [], width=width)


def test_received_by_format_sums_over_listeners_and_an_old_daemon_has_none() -> None:
    kwargs: dict[str, object] = {
        "received": {UDP: 1_000, UNIX: 500},
        "published": 1_495,
        "rejected": {"too_large": 5},
    }
    new = snap(1.0, by_format={UDP: {"statsd": 300}, UNIX: {"statsd": 100, "unknown": 5}}, **kwargs)
    assert new.received == {UDP: 1_000, UNIX: 500}  # still by listener
    assert new.received_by_format == {
        "json": 1_095,
        "gelf": 0,
        "syslog": 0,
        "statsd": 400,
        "unknown": 5,
    }
    old = snap(1.0, formatless=True, **kwargs)  # a daemon from before dialects
    assert old.received == new.received and old.received_by_format == {}
    assert old.unaccounted == new.unaccounted == 0


def two_formats(**kwargs: object) -> History:
    """JSON on both listeners, statsd on the UDP one: 1,400/s and 1,100/s."""
    return history(
        snap(100.0, received={UDP: 1_000, UNIX: 0}, by_format={UDP: {"statsd": 400}}, **kwargs),
        snap(
            102.0,
            received={UDP: 5_000, UNIX: 1_000},
            by_format={UDP: {"statsd": 2_400}, UNIX: {"statsd": 200}},
            **kwargs,
        ),
    )


def test_two_formats_in_use_get_a_row_each_with_rate_and_count() -> None:
    hist = two_formats()
    assert hist.rate(lambda s: s.received_by_format["json"]) == 1_400.0
    assert hist.rate(lambda s: s.received_by_format["statsd"]) == 1_100.0
    view = text_of(hist, [])
    assert "received by format" in view
    assert row(view, "format", "events/s", "received")
    assert row(view, "json", "1,400.0/s", "3,400")
    assert row(view, "statsd", "1,100.0/s", "2,600")
    assert row(view, "in", "2,500.0/s")  # the rows add up to the totals
    assert row(view, "received", "6,000")
    for idle in ("gelf", "syslog", "unknown"):  # exported at 0: not in use, no row
        assert not row(view, idle)
    lines = view.splitlines()
    first = next(i for i, line in enumerate(lines) if row(line, "json", "1,400.0/s"))
    assert row(lines[first + 1], "statsd", "1,100.0/s")  # as --input-formats lists them


def without_hidden_line(view: str) -> str:
    return re.sub(r"\(\d+ more panels?: enlarge the terminal\)\n", "", view)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30)])
def test_a_small_terminal_gives_the_format_panel_up_first(width: int, height: int) -> None:
    """Every other panel keeps its place: the same screen as with one format
    in use, but for the line that counts what was left out."""
    small = text_of(two_formats(), [], width=width, height=height)
    assert "received by format" not in small and "more panel" in small
    assert len(small.rstrip("\n").splitlines()) <= height
    one = history(
        snap(100.0, received={UDP: 1_000, UNIX: 0}),
        snap(102.0, received={UDP: 5_000, UNIX: 1_000}),
    )
    before = text_of(one, [], width=width, height=height)
    assert without_hidden_line(small) == without_hidden_line(before)
    assert "health OK" in small and row(small, "received", "6,000")
    assert "events/s, last" in small and "queue" in small and "latency" in small


@pytest.mark.parametrize("width", [120, 80])
@pytest.mark.parametrize(
    "formats",
    [{}, {UDP: {"statsd": 1_000}, UNIX: {"statsd": 100}}, {UNIX: {"unknown": 0}}],
    ids=["json", "statsd", "unknown-at-0"],
)
def test_one_format_in_use_looks_as_before_dialects(
    width: int, formats: dict[str, dict[str, int]]
) -> None:
    """One format: no per-format rows, the same screen as from a daemon whose
    ingest_events_received_total had no format label (which still renders)."""
    before = {"received": {UDP: 0, UNIX: 0}}
    after: dict[str, object] = {"received": {UDP: 1_000, UNIX: 100}, "published": 1_100}
    hist = history(snap(1.0, **before), snap(2.0, by_format=formats, **after))
    old = history(snap(1.0, formatless=True, **before), snap(2.0, formatless=True, **after))
    view = text_of(hist, [], width=width, height=50)
    assert "received by format" not in view and "more panel" not in view
    assert row(view, UDP, "up", "1,000.0/s", "1,000") and row(view, "received", "1,100")
    assert view == text_of(old, [], width=width, height=50)


def test_unknown_is_in_use_once_something_was_rejected_unread() -> None:
    hist = history(
        snap(1.0, received={UDP: 0}),
        snap(2.0, received={UDP: 103}, by_format={UDP: {"unknown": 3}}, rejected={"too_large": 3}),
    )
    view = text_of(hist, [])
    assert row(view, "json", "100.0/s", "100") and row(view, "unknown", "3.0/s", "3")


def test_a_restarted_daemon_starts_a_new_history() -> None:
    hist = history(
        snap(100.0, received={UDP: 9_000}, published=9_000),
        snap(101.0, received={UDP: 100}, published=100, start=START + 60),
    )
    assert hist.rate(lambda s: s.received_total) is None  # not a negative rate


def test_sparkline_shows_the_load() -> None:
    snaps = [snap(float(t), received={UDP: 0}, published=0) for t in range(50)]
    snaps += [snap(float(t), received={UDP: 1000 * (t - 49)}, published=0) for t in range(50, 60)]
    view = text_of(history(*snaps), [])
    in_line = next(line for line in view.splitlines() if line.startswith("│ in "))
    assert "█" * 10 in in_line  # the last ten seconds at full height
    assert "peak" in view and "in 1,000.0/s" in view


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = ((0.001, 0.0), (0.0025, 50.0), (0.005, 98.0), (0.01, 100.0), (float("inf"), 100.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0025)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0075)  # 0.005 + 1/2 of 0.005
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.00175)
    # Beyond the last finite bound PromQL answers with that bound.
    assert histogram_quantile(0.99, ((0.1, 1.0), (float("inf"), 100.0))) == 0.1
    assert histogram_quantile(0.5, ((0.1, 0.0), (float("inf"), 0.0))) is None


def test_latency_quantiles_use_bucket_deltas_over_the_last_10_s() -> None:
    # All time: 1,000 slow publishes (2.5-5 s). The last 10 s: 100 fast ones.
    old = {2.5: 0, 5.0: 1000}
    new = {0.001: 0, 0.0025: 50, 0.005: 98, 0.01: 100, 2.5: 100, 5.0: 1100}
    hist = history(snap(0.0, publish_latency=old), snap(10.0, publish_latency=new))
    p50, p99, windowed = hist.quantiles(lambda s: s.publish_latency)
    assert windowed
    assert p50 == pytest.approx(0.0025)
    assert p99 == pytest.approx(0.0075)
    view = text_of(hist, [])
    assert row(view, "publish", "2.50 ms", "7.50 ms", "10 s")


def test_latency_falls_back_to_cumulative_when_idle() -> None:
    same = {2.5: 0, 5.0: 1000}
    hist = history(snap(0.0, publish_latency=same), snap(10.0, publish_latency=same))
    p50, _, windowed = hist.quantiles(lambda s: s.publish_latency)
    assert not windowed
    assert p50 == pytest.approx(3.75)
    assert "3.75 s" in text_of(hist, []) and "all time" in text_of(hist, [])


def warnings_box(view: str) -> str:
    return "\n".join(line for line in view.splitlines() if line.startswith("│ ! "))


def test_a_healthy_daemon_has_no_warnings() -> None:
    view = text_of(history(snap(0.0), snap(1.0)), [])
    assert warnings_box(view) == ""
    assert "health OK" in view


@pytest.mark.parametrize(
    ("first", "second", "reasons", "expected"),
    [
        ({}, {"up": {UDP: 1, UNIX: 0}}, [], f"listener {UNIX} is DOWN"),
        ({}, {"qlen": 10}, [], "net.unix.max_dgram_qlen is 10"),
        ({}, {"rcvbuf": 212_992}, [], "SO_RCVBUF only 208.0 KiB of 32.0 MiB"),
        # Compared with what this daemon asked for, not with a default.
        (
            {},
            {"rcvbuf": 4 << 20, "rcvbuf_requested": 8 << 20},
            [],
            "net.core.rmem_max=8388608",
        ),
        ({"kernel_drops": 5}, {"kernel_drops": 42}, [], "kernel dropped 37 datagrams"),
        ({}, {"queue": (95_000, 1000)}, [], "queue 95% full (events)"),
        ({}, {"queue": (10, 64 * 1024 * 1024)}, [], "queue 100% full (bytes)"),
        ({}, {}, ["queue 95% full"], "UNHEALTHY: queue 95% full"),
    ],
)
def test_each_warning_condition_is_shown(
    first: dict[str, object], second: dict[str, object], reasons: list[str], expected: str
) -> None:
    view = text_of(history(snap(0.0, **first), snap(1.0, **second)), reasons)
    assert expected in warnings_box(view)


def test_steady_kernel_drops_are_not_a_warning() -> None:
    view = text_of(history(snap(0.0, kernel_drops=42), snap(1.0, kernel_drops=42)), [])
    assert "kernel dropped" not in view
    assert " 42" in view  # still shown as the listener's total


def test_no_colour_terminal_says_health_in_words() -> None:
    hist = history(snap(0.0), snap(1.0))
    unhealthy = text_of(hist, ["publishing is failing (UNAVAILABLE)"])
    assert "health UNHEALTHY" in unhealthy
    assert "publishing is failing (UNAVAILABLE)" in unhealthy
    assert "health OK" in text_of(hist, [])


def test_small_terminal_keeps_totals_and_health() -> None:
    hist = history(
        snap(0.0, received={UDP: 0, UNIX: 0}),
        snap(1.0, received={UDP: 12_345, UNIX: 0}, published=12_345, qlen=10),
    )
    view = text_of(hist, [], width=60, height=20)
    assert len(view.rstrip("\n").splitlines()) <= 20
    assert row(view, "received", "12,345") and row(view, "published", "12,345")
    assert "health OK" in view
    assert re.search(r"\d+ more panels?: enlarge the terminal", view)  # says what it left out
    text_of(hist, ["x" * 200], width=20, height=4)  # absurdly small: no exception


def test_ascii_terminal_gets_ascii_only() -> None:
    hist = history(snap(0.0, received={UDP: 0}), snap(1.0, received={UDP: 10}, published=10))
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # strict: one non-ASCII char raises
    console = Console(file=out, width=50, height=20, force_terminal=True, color_system=None)
    assert console.options.ascii_only
    long_reason = "socket file /run/café/ingest.sock is gone " * 3  # cropped with an ellipsis
    console.print(render(hist, [long_reason], width=50, height=20, ascii_only=True))
    out.flush()
    view = out.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert "health UNHEALTHY" in view and "UNHEALTHY: socket file /run/caf?/ingest" in view
    assert "accounted ok" in view
    assert row(view, "in", "10.0/s", "@")  # the sparkline in ASCII


def test_a_grant_that_matches_a_small_request_is_not_a_warning() -> None:
    """An operator who asked for 4 MiB and got it is not nagged about the
    default; the warning follows what the daemon was told to ask for."""
    quiet = {"rcvbuf": 4 << 20, "rcvbuf_requested": 4 << 20}
    view = text_of(history(snap(0.0, **quiet), snap(1.0, **quiet)), [])
    assert "SO_RCVBUF" not in view


def test_disconnected_keeps_the_numbers_marked_stale() -> None:
    hist = history(snap(0.0, received={UDP: 4_321}, published=4_321))
    view = text_of(hist, [], disconnected="connection refused")
    assert "DISCONNECTED, numbers are stale: connection refused" in view
    assert "4,321" in view
    assert "health OK" not in view
    assert "DISCONNECTED: nope" in text_of(History(), None, disconnected="nope")


def test_registry_and_parsed_text_give_the_same_snapshot() -> None:
    view = View(in_flight=3)
    view.listener_views = [Listener(UDP)]
    view.stats.events_received[UDP] += 1_234
    view.stats.events_by_format[(UDP, "statsd")] += 34  # of the 1,234
    view.stats.rejected["not_object"] += 4
    view.stats.published += 1_227
    view.stats.published_by_topic["t"] += 1_227
    view.stats.publish_requests["OK"] += 9
    view.stats.publish_latency.observe(0.003)
    registry = build_registry(view)  # type: ignore[arg-type]
    direct = Snapshot.from_families(registry.collect(), now=1.0, wall_time=START)
    parsed = Snapshot.from_families(
        text_string_to_metric_families(generate_latest(registry).decode()),
        now=1.0,
        wall_time=START,
    )
    assert direct == parsed
    assert direct.received_total == 1_234 and direct.published == 1_227
    assert direct.unaccounted == 0
    assert direct.received == {UDP: 1_234}
    assert direct.received_by_format == {
        "json": 1_200,
        "gelf": 0,
        "syslog": 0,
        "statsd": 34,
        "unknown": 0,
    }


def test_metrics_export_every_configured_topic_by_id() -> None:
    view = View(in_flight=3)
    view.topic_paths = (
        "projects/p/topics/events",
        "projects/p/topics/errors",
        "projects/p/topics/audit",
    )
    view.stats.events_received[UDP] += 10  # 7 published, 3 in flight
    view.stats.published += 7
    view.stats.published_by_topic["errors"] += 2
    view.stats.published_by_topic["events"] += 5
    registry = build_registry(view)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    published = [
        line for line in text.splitlines() if line.startswith("ingest_events_published_total")
    ]
    # Configured order (--topic's first); audit at 0 before its first event.
    assert published == [
        'ingest_events_published_total{topic="events"} 5.0',
        'ingest_events_published_total{topic="errors"} 2.0',
        'ingest_events_published_total{topic="audit"} 0.0',
    ]
    assert [line for line in text.splitlines() if line.startswith("ingest_topic_info")] == [
        'ingest_topic_info{topic="projects/p/topics/events"} 1.0',
        'ingest_topic_info{topic="projects/p/topics/errors"} 1.0',
        'ingest_topic_info{topic="projects/p/topics/audit"} 1.0',
    ]
    direct = Snapshot.from_families(registry.collect(), now=1.0, wall_time=START)
    parsed = Snapshot.from_families(text_string_to_metric_families(text), now=1.0, wall_time=START)
    assert direct == parsed
    assert parsed.published == 7 and parsed.unaccounted == 0
    assert parsed.published_by_topic == {"events": 5, "errors": 2, "audit": 0}
    assert list(parsed.published_by_topic) == ["events", "errors", "audit"]
    assert parsed.topic == "projects/p/topics/events"


def test_inline_dashboard_draws_and_logs_above_until_cancelled() -> None:
    view = View(in_flight=3)
    view.stats.events_received[UDP] += 12_345
    view.stats.published += 12_342
    view.stats.published_by_topic["t"] += 12_342
    registry = build_registry(view)  # type: ignore[arg-type]
    out = io.StringIO()
    console = Console(file=out, width=100, height=40, force_terminal=True, color_system=None)
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    dashboard = InlineDashboard(registry.collect, lambda: [], console=console, interval_s=0.05)

    async def scenario() -> None:
        task = asyncio.create_task(dashboard.run())
        for _ in range(200):  # bounded: 10 s
            if "12,345" in out.getvalue():
                break
            await asyncio.sleep(0.05)
        logging.getLogger("ingest.test").warning("a log line above the dashboard")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
    drawn = out.getvalue()
    assert "12,345" in drawn and "12,342" in drawn
    assert "a log line above the dashboard" in drawn
    assert handler.stream is sys.stderr  # given back
    assert dashboard.history.latest is not None
