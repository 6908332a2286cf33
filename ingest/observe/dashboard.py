"""The operator's view: ``render(history, health_reasons, ...)`` -> a rich renderable,
shared by ``ingest top`` (over HTTP) and ``ingest serve --dashboard`` (in process,
``InlineDashboard``).

``render`` is a pure function of a History and the health reasons: no clock,
no I/O. Nothing is said by colour alone; every state is also a word, and the
layout drops the least important panels first in a small terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.styled import Styled
from rich.table import Table
from rich.text import Text

from ingest.observe.health import QUEUE_FILL_LIMIT
from ingest.observe.snapshot import (
    LATENCY_WINDOW_S,
    SPARK_S,
    Buckets,
    History,
    Pick,
    Snapshot,
    histogram_quantile,
)
from ingest.observe.tap import FORMATS
from ingest.receive.kernel import UNIX_QLEN_RECOMMENDED

__all__ = ["History", "InlineDashboard", "Snapshot", "histogram_quantile", "render", "sparkline"]

WIDE_MIN_COLUMNS = 100  # below this, panels stack in one column
REFRESH_INTERVAL_S = 0.5  # the issue: at least twice a second

SPARK_UNICODE = "▁▂▃▄▅▆▇█"
SPARK_ASCII = ".:-=+*#@"


# ---------------------------------------------------------------- formatting
def _num(value: float) -> str:
    return f"{int(value):,}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.2f} s"


def _uptime(value: float | None) -> str:
    if value is None:
        return "?"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def sparkline(values: Sequence[float | None], ascii_only: bool) -> str:
    """One character per value, scaled to the largest; blank where none or 0."""
    chars = SPARK_ASCII if ascii_only else SPARK_UNICODE
    top = max((v for v in values if v is not None), default=0.0)
    out = []
    for value in values:
        if not value or top <= 0:
            out.append(" ")
        else:
            out.append(chars[min(len(chars) - 1, int(value / top * len(chars)))])
    return "".join(out)


def _bar(fill: float, width: int, ascii_only: bool) -> str:
    done = round(max(0.0, min(1.0, fill)) * width)
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    return "[" + full * done + empty * (width - done) + "]"


# ------------------------------------------------------------------- panels
@dataclass(frozen=True)
class _Box:
    title: str
    body: RenderableType
    rows: int  # body lines; the panel adds 2 for its border

    @property
    def height(self) -> int:
        return self.rows + 2


def _grid(justify: str) -> Table:
    """A borderless grid; one column per letter of ``justify`` (l/r)."""
    table = Table.grid(padding=(0, 1))
    for letter in justify:
        table.add_column(justify="right" if letter == "r" else "left", no_wrap=True)
    return table


def _table(*headers: str) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True)
    return table


def warnings_of(history: History, health_reasons: Sequence[str] | None) -> list[str]:
    """Conditions an operator must act on, each as a sentence."""
    snap = history.latest
    if snap is None:
        return []
    out = [f"UNHEALTHY: {reason}" for reason in health_reasons or ()]
    if health_reasons is None and snap.healthy is False:
        out.append("UNHEALTHY (see /healthz)")
    out += [f"listener {name} is DOWN" for name, up in sorted(snap.listener_up.items()) if not up]
    has_unix = any(name.startswith("unix:") for name in snap.listeners)
    if snap.unix_qlen is not None and snap.unix_qlen < UNIX_QLEN_RECOMMENDED and has_unix:
        out.append(
            f"net.unix.max_dgram_qlen is {snap.unix_qlen}: unix senders get EAGAIN; "
            f"sysctl -w net.unix.max_dgram_qlen={UNIX_QLEN_RECOMMENDED}"
        )
    wanted = snap.rcvbuf_requested  # what the daemon was told to ask for
    for name, granted in sorted(snap.rcvbuf.items()):
        if wanted is not None and granted < wanted:
            out.append(
                f"{name}: SO_RCVBUF only {_bytes(granted)} of {_bytes(wanted)}; "
                f"sysctl -w net.core.rmem_max={wanted}"
            )
    for name in sorted(snap.kernel_drops):
        lost = history.increase(_entry(lambda s: s.kernel_drops, name), LATENCY_WINDOW_S)
        if lost > 0:
            out.append(f"{name}: kernel dropped {_num(lost)} datagrams in the last 10 s")
    for what, used, cap in (
        ("events", snap.queue_events, snap.capacity_events),
        ("bytes", snap.queue_bytes, snap.capacity_bytes),
    ):
        if cap and used / cap > QUEUE_FILL_LIMIT:
            out.append(f"queue {used / cap:.0%} full ({what})")
    return out


def _entry(of: Callable[[Snapshot], Mapping[str, int]], key: str) -> Pick:
    return lambda snap: float(of(snap).get(key, 0))


def _events_in(snap: Snapshot) -> float:
    return float(snap.received_total)


def _events_out(snap: Snapshot) -> float:
    return float(snap.published)


def _rates_box(history: History, width: int, ascii_only: bool) -> _Box:
    spark_width = max(0, min(SPARK_S, width - 20))
    grid = _grid("lrl")
    peaks = []
    for label, pick in (("in", _events_in), ("out", _events_out)):
        series = history.series(pick)[SPARK_S - spark_width :] if spark_width else []
        peaks.append(max((v for v in series if v is not None), default=0.0))
        grid.add_row(label, _rate(history.rate(pick)), sparkline(series, ascii_only))
    # The sparkline is scaled to its own peak: say what full height means.
    grid.add_row("peak", "", f"in {_rate(peaks[0])}, out {_rate(peaks[1])}")
    return _Box(f"events/s, last {spark_width} s", grid, 3)


def _totals_box(snap: Snapshot, ascii_only: bool) -> _Box:
    grid = _grid("lrlr")
    grid.add_row(
        "received", _num(snap.received_total), "rejected", _num(sum(snap.rejected.values()))
    )
    grid.add_row("published", _num(snap.published), "dropped", _num(sum(snap.dropped.values())))
    grid.add_row("queued", _num(snap.queue_events), "in flight", _num(snap.inflight))
    missing = snap.unaccounted
    grid.add_row(
        Text("accounted " + ("ok" if ascii_only else "✓"), style="green")
        if missing == 0
        else Text(f"UNACCOUNTED {missing:+,}", style="bold red")
    )
    return _Box("totals (events)", grid, 4)


def _queue_box(snap: Snapshot, width: int, ascii_only: bool) -> _Box:
    grid = _grid("llrl")
    bar_width = max(4, min(30, width - 44))
    for what, fill, text in (
        (
            "events",
            _fill(snap.queue_events, snap.capacity_events),
            f"{_num(snap.queue_events)} / {_num(snap.capacity_events)}",
        ),
        (
            "bytes",
            _fill(snap.queue_bytes, snap.capacity_bytes),
            f"{_bytes(snap.queue_bytes)} / {_bytes(snap.capacity_bytes)}",
        ),
    ):
        grid.add_row(what, _bar(fill, bar_width, ascii_only), f"{fill:4.0%}", text)
    grid.add_row("in flight", "", "", _num(snap.inflight))
    return _Box("queue", grid, 3)


def _fill(used: int, capacity: int) -> float:
    return used / capacity if capacity else 0.0


def _publish_latency(snap: Snapshot) -> Buckets:
    return snap.publish_latency


def _event_latency(snap: Snapshot) -> Buckets:
    return snap.event_latency


def _latency_box(history: History) -> _Box:
    table = _table("", "p50", "p99", "over")
    for label, pick in (("publish", _publish_latency), ("end-to-end", _event_latency)):
        p50, p99, windowed = history.quantiles(pick)
        table.add_row(label, _seconds(p50), _seconds(p99), "10 s" if windowed else "all time")
    return _Box("latency", table, 3)


def _listeners_box(history: History, snap: Snapshot) -> _Box:
    table = _table("listener", "up", "events/s", "events", "kernel drops")
    for name in snap.listeners:
        up = snap.listener_up.get(name)
        table.add_row(
            name,
            "?" if up is None else ("up" if up else Text("DOWN", style="bold red")),
            _rate(history.rate(_entry(lambda s: s.received, name))),
            _num(snap.received.get(name, 0)),
            _num(snap.kernel_drops[name]) if name in snap.kernel_drops else "-",
        )
    return _Box("listeners", table, 1 + len(snap.listeners))


def _topics_box(history: History, snap: Snapshot) -> _Box | None:
    """Published events by topic, --topic's first; None with a single topic
    (its numbers are the totals) and from an old daemon without the label."""
    if len(snap.published_by_topic) < 2:
        return None
    table = _table("topic", "events/s", "published")
    for topic in snap.published_by_topic:
        table.add_row(
            topic,
            _rate(history.rate(_entry(lambda s: s.published_by_topic, topic))),
            _num(snap.published_by_topic[topic]),
        )
    return _Box("published by topic", table, 1 + len(snap.published_by_topic))


def _formats_in_use(snap: Snapshot) -> list[str]:
    """The formats that received events, as --input-formats lists them, unknown
    (rejected unread) after them, and last any a newer daemon knows and this
    dashboard does not. A format at 0 is configured but not in use."""
    rank = {fmt: index for index, fmt in enumerate(FORMATS)}
    used = [fmt for fmt, count in snap.received_by_format.items() if count > 0]
    return sorted(used, key=lambda fmt: (rank.get(fmt, len(rank)), fmt))


def _formats_box(history: History, snap: Snapshot) -> _Box | None:
    """Received events by input format; None unless two or more formats are in
    use (one format's numbers are the totals), and from an old daemon without
    the label."""
    formats = _formats_in_use(snap)
    if len(formats) < 2:
        return None
    table = _table("format", "events/s", "received")
    for fmt in formats:
        table.add_row(
            fmt,
            _rate(history.rate(_entry(lambda s: s.received_by_format, fmt))),
            _num(snap.received_by_format[fmt]),
        )
    return _Box("received by format", table, 1 + len(formats))


def _reasons_box(snap: Snapshot) -> _Box:
    table = _table("lost", "reason", "events")
    lost = [("rejected", r, n) for r, n in sorted(snap.rejected.items()) if n]
    lost += [("dropped", r, n) for r, n in sorted(snap.dropped.items()) if n]
    for kind, reason, count in lost:
        table.add_row(kind, reason, _num(count))
    if not lost:
        table.add_row("none", "", "")
    return _Box("rejected / dropped by reason", table, 1 + max(1, len(lost)))


def _codes_box(history: History, snap: Snapshot) -> _Box:
    table = _table("publish code", "requests", "/s")
    for code, count in sorted(snap.requests.items()):
        rate = history.rate(_entry(lambda s: s.requests, code))
        table.add_row(code, _num(count), _rate(rate))
    return _Box("publish requests", table, 1 + len(snap.requests))


def _panels(
    history: History, snap: Snapshot, warns: list[str], *, width: int, wide: bool, ascii_only: bool
) -> dict[str, _Box]:
    boxes = {
        "rates": _rates_box(history, width - 4, ascii_only),  # always a full row
        "totals": _totals_box(snap, ascii_only),
        "queue": _queue_box(snap, width // 2 if wide else width, ascii_only),
        "latency": _latency_box(history),
        "listeners": _listeners_box(history, snap),
        "reasons": _reasons_box(snap),
        "codes": _codes_box(history, snap),
    }
    for name, box in (
        ("formats", _formats_box(history, snap)),
        ("topics", _topics_box(history, snap)),
    ):
        if box is not None:
            boxes[name] = box
    if warns:
        lines = Text("\n".join(f"! {line}" for line in warns), style="yellow", no_wrap=True)
        lines.overflow = "ellipsis"
        boxes["warnings"] = _Box("warnings", lines, len(warns))
    return boxes


# Rows in display order; a row's priority decides what a small terminal keeps.
# The breakdowns of a total (formats, then topics) are given up first.
_WIDE_ROWS = (
    ("totals", "queue"),
    ("rates",),
    ("warnings",),
    ("latency", "codes"),
    ("listeners",),
    ("formats",),  # only with more than one format in use
    ("topics",),  # only with more than one topic
    ("reasons",),
)
_WIDE_PRIORITY = (0, 1, 2, 3, 4, 7, 6, 5)
_NARROW_ROWS = tuple(
    (name,)
    for name in (
        "warnings",
        "totals",
        "rates",
        "queue",
        "latency",
        "listeners",
        "formats",
        "topics",
        "reasons",
        "codes",
    )
)
_NARROW_PRIORITY = (2, 0, 1, 3, 4, 5, 9, 8, 6, 7)


def _header(
    snap: Snapshot | None, health_reasons: Sequence[str] | None, disconnected: str | None
) -> list[Text]:
    lines = []
    if snap is not None:
        healthy = snap.healthy if health_reasons is None else not health_reasons
        if disconnected is not None:
            healthy = None  # the last verdict says nothing about a daemon we cannot reach
        health = {
            True: Text("health OK", style="bold green"),
            False: Text("health UNHEALTHY", style="bold white on red"),
            None: Text("health unknown"),
        }[healthy]
        lines.append(
            Text.assemble(  # health first: a narrow terminal crops the end
                health,
                " | ",
                ("ingest ", "bold"),
                snap.version,
                " | up ",
                _uptime(snap.uptime_s),
                " | ",
                snap.topic,
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    else:
        lines.append(Text("ingest: no data yet", style="bold"))
    if disconnected is not None:
        lines.append(
            Text(
                ("DISCONNECTED, numbers are stale: " if snap else "DISCONNECTED: ") + disconnected,
                style="bold white on red",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    return lines


def render(
    history: History,
    health_reasons: Sequence[str] | None,
    *,
    width: int,
    height: int,
    ascii_only: bool = False,
    disconnected: str | None = None,
) -> RenderableType:
    """The dashboard for a width x height terminal. ``health_reasons``: [] healthy,
    reasons when unhealthy, None when /healthz is unknown (the ingest_healthy gauge
    decides). ``disconnected``: why the latest scrape failed; the last numbers
    are then shown dimmed and marked stale."""
    snap = history.latest
    header = _header(snap, health_reasons, disconnected)
    if snap is None:
        return Group(*header)
    wide = width >= WIDE_MIN_COLUMNS
    rows, priority = (_WIDE_ROWS, _WIDE_PRIORITY) if wide else (_NARROW_ROWS, _NARROW_PRIORITY)
    warns = warnings_of(history, health_reasons)
    boxes = _panels(history, snap, warns, width=width, wide=wide, ascii_only=ascii_only)
    present = [tuple(n for n in row if n in boxes) for row in rows]
    heights = [max((boxes[n].height for n in row), default=0) for row in present]

    budget, chosen = height - len(header), set[int]()
    if sum(heights) > budget:
        budget -= 1  # for the line that says panels are hidden
    for index in sorted(range(len(rows)), key=lambda i: priority[i]):
        if present[index] and (heights[index] <= budget or not chosen):
            chosen.add(index)  # the first row (totals) is shown even when it does not fit
            budget -= heights[index]
    hidden = sum(len(row) for i, row in enumerate(present) if i not in chosen)

    body: list[RenderableType] = []
    for index in sorted(chosen):
        panels = [
            Panel(boxes[n].body, title=boxes[n].title, title_align="left", height=heights[index])
            for n in present[index]
        ]
        if len(panels) == 1:
            body.append(panels[0])
        else:
            grid = Table.grid(expand=True)
            for _ in panels:
                grid.add_column(ratio=1)
            grid.add_row(*panels)
            body.append(grid)
    if hidden:
        what = "panel" if hidden == 1 else "panels"
        body.append(Text(f"({hidden} more {what}: enlarge the terminal)", style="dim"))
    # Stale numbers stay readable but dimmed; the DISCONNECTED line says why.
    view = Group(*header, Group(*body) if disconnected is None else Styled(Group(*body), "dim"))
    return _AsciiOnly(view) if ascii_only else view


class _AsciiOnly:
    """Rich's own ellipsis, and any non-ASCII in a label or a reason, would
    raise UnicodeEncodeError on an ASCII terminal: translate every segment."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            text = segment.text.replace("\u2026", ".").encode("ascii", "replace").decode()
            yield segment._replace(text=text)


# --------------------------------------------------------------- in-process
class InlineDashboard:
    """``ingest serve --dashboard``: the same view below the log, refreshed at
    2 Hz from the daemon's own registry until cancelled.

    ``collect`` returns metric families (``registry.collect``); ``health_reasons``
    returns the current reasons ([] when healthy). Both are called on the event
    loop, between callbacks, so the numbers are consistent; only the drawing
    runs in a worker thread, to keep terminal writes off the loop."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Metric]],
        health_reasons: Callable[[], Sequence[str]],
        console: Console | None = None,
        interval_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._collect = collect
        self._health = health_reasons
        self.console = console or Console()
        self._interval_s = interval_s
        self.history = History()

    async def run(self) -> None:
        live = Live(
            console=self.console,
            screen=False,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        original_stderr = sys.stderr
        with live, _log_handlers_follow(original_stderr):
            while True:
                self.history.add(Snapshot.from_families(self._collect(), time.monotonic()))
                size = self.console.size
                view = render(
                    self.history,
                    list(self._health()),
                    width=size.width,
                    height=max(12, size.height - 6),  # leave room for log lines above
                    ascii_only=self.console.options.ascii_only,
                )
                await asyncio.to_thread(live.update, view, refresh=True)
                await asyncio.sleep(self._interval_s)


@contextlib.contextmanager
def _log_handlers_follow(original_stderr: object) -> Iterator[None]:
    """Live swaps sys.stderr for a proxy that prints above the display, but a
    StreamHandler keeps the stream it was built with: point those at the proxy
    while the display runs, or log lines would tear through it."""
    moved: list[logging.StreamHandler[typing.Any]] = []
    if sys.stderr is not original_stderr:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original_stderr:
                handler.setStream(sys.stderr)
                moved.append(handler)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(original_stderr)
