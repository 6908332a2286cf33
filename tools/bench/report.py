"""What one `make bench` phase measured, and how the runs are reported.

A phase is one fresh ``ingest serve`` fed at a fixed offered rate (tools.bench
runs them). Two runs are reported apart and then side by side:

- the emulator run: the real Pub/Sub emulator on the same 2 cores, every
  event pulled back and checked — proof of delivery, but the emulator's own
  CPU (more than the daemon's a message) is on the daemon's host;
- the stand-in run: a fake Publish server (tools/testing/fakepubsub.py) that costs
  the host almost nothing, as the remote service does in production, stepped
  up in offered rate — the daemon's own ceiling.

Both runs also have *metadata* phases: the same daemon, rate and transport
(UDP) with Pub/Sub-native metadata (two attributes from event fields, an
ordering key of ``--keys`` distinct values, one route to a second topic),
reported beside the plain phases (``plain_vs_metadata``).

The stand-in run also has *dialect* steps: the same daemon and rate fed GELF
(zlib) messages or DogStatsD lines instead of JSON events (tools.testing.loadgen
``--format``), reported beside the plain JSON step of the same rate
(``json_vs_dialects``).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.testing.daemon import STOPPED_RE, Metrics
from tools.testing.verify import Metadata, Verification

# Targets (issue 8). Emulator run: the UDP loss target in every one of
# TARGET_REPEATS runs; stand-in run: the daemon's ceiling and its CPU.
TARGET_RATE = 150_000  # events/s offered over UDP ...
TARGET_LOSS_PCT = 0.1  # ... delivered with at most this loss
TARGET_REPEATS = 5  # ... in this many runs out of as many
TARGET_CPU_US = 6.0  # daemon CPU per event, emulator run
TARGET_RATIO = 15.0  # ingest's events/s over the naive publisher's
STANDIN_TARGET_RATE = 200_000  # events/s over UDP against the stand-in, same loss bound
STANDIN_TARGET_CPU_US = 4.0  # daemon CPU per event against the stand-in
TARGET_METADATA_EXTRA_US = 1.5  # metadata's daemon CPU per event over the plain path's
QUIET_BUSY_CORES = 0.3  # the machine counts as quiet below this (2 cores shared)
MAX_COLUMNS = 4  # per printed table, so that it fits a terminal


@dataclass
class Senders:
    """The load generators' reports (tools.testing.loadgen), summed."""

    attempted: int = 0
    ok: int = 0
    eagain: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    start_wall: float = 0.0
    cpu_s: float = 0.0
    max_lag_ms: float = 0.0
    completed: bool = True

    def add(self, r: dict[str, Any]) -> None:
        """Add one sender's JSON report."""
        self.attempted += r["attempted"]
        self.ok += r["ok"]
        self.eagain += r["eagain"]
        self.errors.update(r["errors"])
        self.elapsed_s = max(self.elapsed_s, r["elapsed_s"])
        self.start_wall = min(self.start_wall or r["start_wall"], r["start_wall"])
        self.cpu_s += r["cpu_s"]
        self.max_lag_ms = max(self.max_lag_ms, r["max_lag_ms"])
        self.completed = self.completed and r["completed"]


@dataclass
class Phase:
    name: str
    transport: str  # "udp" or "unix"
    rate: float  # events/s asked of the senders
    qlen: int | None = None  # net.unix.max_dgram_qlen the daemon's sockets were made under
    rcvbuf: int | None = None  # --udp-rcvbuf-bytes given to the daemon (None: its default)
    metadata: Metadata | None = None  # the metadata variant: what its messages carry
    linger_ms: float | None = None  # --batch-linger-ms given to the daemon (None: its default)
    fmt: str = "json"  # the events' wire format (tools.testing.loadgen --format)
    stepping: bool = True  # a stand-in step of the stepping (not a comparison's own)
    senders: Senders = field(default_factory=Senders)
    drained: bool = False
    window_s: float = 0.0  # senders start -> drained
    daemon_cpu_s: float = 0.0
    server_cpu_s: float | None = None  # the Pub/Sub side: emulator or stand-in
    machine_busy_s: float = 0.0
    interrupts_s: float = 0.0  # irq + softirq: loopback UDP delivery, charged to no process
    busy_before_cores: float = 0.0  # the machine just before the phase
    peak_rss_kib: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    stopped_line: str | None = None
    exit_code: int | None = None
    warnings: list[str] = field(default_factory=list)
    verification: Verification | None = None

    @property
    def config(self) -> str:
        """The phase's settings without its repeat number (for grouping)."""
        if self.transport == "unix":
            return f"unix qlen {self.qlen}"
        rcvbuf = f"rcvbuf {self.rcvbuf / (1 << 20):g} MiB" if self.rcvbuf else "rcvbuf default"
        metadata = f" metadata ({self.metadata.keys} keys)" if self.metadata else ""
        fmt = "" if self.fmt == "json" else f" {self.fmt}"
        linger = f" linger {self.linger_ms:g} ms" if self.linger_ms is not None else ""
        return f"udp {self.rate:,.0f}/s {rcvbuf}{metadata}{fmt}{linger}"

    @property
    def plain(self) -> bool:
        """JSON events without metadata: the plain path."""
        return self.metadata is None and self.fmt == "json"

    @property
    def received(self) -> int:
        match = STOPPED_RE.search(self.stopped_line or "")
        if match:
            return int(match.group(1))
        return self.metrics.total("ingest_events_received_total")

    @property
    def delivered(self) -> int:
        return self.verification.distinct if self.verification else 0

    @property
    def verified(self) -> bool:
        return bool(self.verification and self.verification.complete)

    @property
    def offered_rate(self) -> float:
        s = self.senders
        return s.attempted / s.elapsed_s if s.elapsed_s else 0.0

    @property
    def loss_pct(self) -> float:
        offered = self.senders.attempted
        return 100.0 * (offered - self.delivered) / offered if offered else 100.0

    def meets(self, rate: float) -> bool:
        """Offered ``rate`` (within 1 %) and lost at most TARGET_LOSS_PCT."""
        return (
            self.offered_rate >= 0.99 * rate and self.verified and self.loss_pct <= TARGET_LOSS_PCT
        )

    @property
    def delivered_rate(self) -> float:
        """Delivered events over first send -> last publish (the server's stamp)."""
        v = self.verification
        if not v or not v.last_publish_us:
            return 0.0
        span = v.last_publish_us / 1e6 - self.senders.start_wall
        return self.delivered / span if span > 0 else 0.0

    @property
    def cpu_us_per_event(self) -> float | None:
        return self.daemon_cpu_s / self.received * 1e6 if self.received else None

    @property
    def events_per_request(self) -> float | None:
        """Mean messages per successful Publish request (the daemon's /metrics)."""
        ok = self.metrics.get("ingest_publish_requests_total", {}).get('code="OK"')
        return self.metrics.total("ingest_events_published_total") / ok if ok else None

    @property
    def requests_per_s(self) -> float | None:
        """Publish requests (any outcome) over the phase's window."""
        n = self.metrics.total("ingest_publish_requests_total")
        return n / self.window_s if self.window_s else None

    @property
    def server_us_per_message(self) -> float | None:
        n = self.metrics.total("ingest_events_published_total")
        return self.server_cpu_s / n * 1e6 if self.server_cpu_s is not None and n else None

    @property
    def others_cores(self) -> float | None:
        """CPU that neither the daemon, the senders, the server nor interrupts
        used during the phase: other processes on the machine (contamination)."""
        if not self.window_s or self.server_cpu_s is None:
            return None
        ours = self.daemon_cpu_s + self.senders.cpu_s + self.server_cpu_s + self.interrupts_s
        return max(0.0, self.machine_busy_s - ours) / self.window_s


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def phase_cells(p: Phase) -> dict[str, str]:
    """One column of the table."""
    s, v, m = p.senders, p.verification, p.metrics
    failures = [f"EAGAIN {s.eagain:,}"] if s.eagain else []
    failures += [f"{name} {n:,}" for name, n in s.errors.items()]
    p50 = p99 = top = None
    if v:
        p50, p99, top = v.latency_ms(0.5, 0.99, 1.0)
    per_event = lambda cpu, n: _n(cpu / n * 1e6 if cpu is not None and n else None, 2)  # noqa: E731
    cores = lambda cpu: _n(cpu / p.window_s if p.window_s else None, 2)  # noqa: E731
    is_udp = p.transport == "udp"
    checked = v is not None and v.metadata_checked
    return {
        "offered events/s": _n(p.offered_rate),
        "events offered": _n(s.attempted),
        "sent ok": _n(s.ok),
        "sender-side failures": ", ".join(failures) or "0",
        "sender max lag (ms)": _n(s.max_lag_ms, 1),
        "unix qlen of the daemon's socket": _n(p.qlen) if not is_udp else "n/a",
        "SO_RCVBUF granted": _n(m.total("ingest_udp_rcvbuf_bytes")) if is_udp else "n/a",
        "kernel UDP drops (rcvbuf full)": _n(m.total("ingest_kernel_drops_total"))
        if is_udp
        else "n/a",
        "daemon received": _n(p.received),
        "events per Publish request": _n(p.events_per_request),
        "Publish requests/s": _n(p.requests_per_s),
        "daemon dropped": str(m.nonzero("ingest_events_dropped_total") or 0),
        "delivered (distinct seq)": (_n(p.delivered) + ("" if p.verified else " PARTIAL")),
        "  duplicates / foreign": f"{v.duplicates} / {v.foreign}" if v else "-",
        "  on the route's topic": _n(v.routed) if v and checked else "n/a",
        "  wrong attrs/key/topic": _n(v.wrong_metadata) if v and checked else "n/a",
        "  verification (s)": _n(v.elapsed_s, 1) if v else "-",
        "loss % of offered": _n(p.loss_pct, 3),
        "loss % of sent ok": _n(100 * (s.ok - p.delivered) / s.ok if s.ok else None, 3),
        "delivered events/s": _n(p.delivered_rate),
        "latency ms p50/p99/max": f"{_n(p50)} / {_n(p99)} / {_n(top)}",
        "daemon CPU µs/event": per_event(p.daemon_cpu_s, p.received),
        "daemon CPU (cores)": cores(p.daemon_cpu_s),
        "daemon peak RSS (MiB)": _n(p.peak_rss_kib / 1024 if p.peak_rss_kib else None),
        "sender CPU µs/event": per_event(s.cpu_s, s.attempted),
        "Pub/Sub side CPU µs/message": _n(p.server_us_per_message, 2),
        "machine busy (cores)": cores(p.machine_busy_s),
        "  of which irq+softirq": cores(p.interrupts_s),
        "  of which other processes": _n(p.others_cores, 2),
        "  busy before the phase": _n(p.busy_before_cores, 2),
        "drained before deadline": "yes" if p.drained else "NO",
        "daemon exit code": _n(p.exit_code),
    }


def print_table(title: str, phases: Sequence[Phase]) -> None:
    """The phases as columns, at most MAX_COLUMNS to a block."""
    print(f"\n{title}")
    for at in range(0, len(phases), MAX_COLUMNS):
        block = phases[at : at + MAX_COLUMNS]
        columns = [phase_cells(p) for p in block]
        width = max(22, *(len(p.name) + 2 for p in block))
        print(f"  {'':<32}" + "".join(f"{p.name:>{width}}" for p in block))
        for label in columns[0]:
            print(f"  {label:<32}" + "".join(f"{c[label]:>{width}}" for c in columns))
        if at + MAX_COLUMNS < len(phases):
            print()


def print_daemon_lines(phases: Sequence[Phase]) -> None:
    print("\nthe daemon's own view (its last line after SIGTERM):")
    for p in phases:
        print(f"  {p.name:<18} {(p.stopped_line or 'no stopped line').split('stopped: ')[-1]}")
    for p in phases:
        if (p.others_cores or 0) > QUIET_BUSY_CORES / 2:
            print(
                f"  NOTE {p.name}: other processes used {p.others_cores:.2f} cores during the "
                "phase; its rates and latencies are understated"
            )
    notes = sorted({w.split(": ", 1)[-1] for p in phases for w in p.warnings})
    for note in notes[:6]:
        print(f"  daemon warning: {note}")


def print_repeats(phases: Sequence[Phase]) -> None:
    """Per configuration: how many of its runs met the loss bound, and each run."""
    configs: dict[str, list[Phase]] = {}
    for p in phases:
        configs.setdefault(p.config, []).append(p)
    print(f"\nper configuration: runs with loss <= {TARGET_LOSS_PCT} % of offered")
    for config, runs in configs.items():
        ok = sum(p.meets(p.rate) for p in runs)
        print(f"  {config}: {ok} of {len(runs)}")
        for p in runs:
            drops = p.metrics.total("ingest_kernel_drops_total")
            failures = p.senders.eagain + sum(p.senders.errors.values())
            lost = f"kernel drops {drops:,}" if p.transport == "udp" else f"EAGAIN {failures:,}"
            print(
                f"    {p.name:<16} loss {p.loss_pct:7.3f} %  ({lost}; delivered "
                f"{p.delivered:,}{'' if p.verified else ' PARTIAL'})  daemon "
                f"{_n(p.cpu_us_per_event, 2)} µs/event  other processes "
                f"{_n(p.others_cores, 2)} cores"
            )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _span(values: Sequence[float | None], digits: int) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{min(known):,.{digits}f} to {max(known):,.{digits}f}"


def emulator_targets(udp: Sequence[Phase], naive: dict[str, dict[str, float]]) -> list[str]:
    """The emulator run's PASS/MISS lines over its UDP phases at the target rate."""
    runs = [p for p in udp if p.rate == TARGET_RATE]
    runs = [p for p in runs if p.rcvbuf is None] or runs
    if not runs:
        return [f"  (no UDP phase at {TARGET_RATE:,}/s was run against the emulator)"]
    met = sum(p.meets(TARGET_RATE) for p in runs)
    enough = len(runs) >= TARGET_REPEATS
    lines = [
        f"  {verdict(enough and met == len(runs))}  UDP {TARGET_RATE:,}/s offered, loss <= "
        f"{TARGET_LOSS_PCT} %, in {TARGET_REPEATS} of {TARGET_REPEATS} runs: {met} of "
        f"{len(runs)} (loss {_span([p.loss_pct for p in runs], 3)} %, offered "
        f"{_span([p.offered_rate for p in runs], 0)}/s)"
        + ("" if enough else f" — too few runs: --repeat {TARGET_REPEATS}")
    ]
    cpus = [p.cpu_us_per_event for p in runs]
    cpu = _median(cpus)
    lines.append(
        f"  {verdict(cpu is not None and cpu <= TARGET_CPU_US)}  daemon CPU <= "
        f"{TARGET_CPU_US:g} µs/event (UDP, median of {len(runs)}): {_n(cpu, 2)} µs/event "
        f"({_span(cpus, 2)})"
    )
    futures, sync = naive.get("futures"), naive.get("sync")
    if futures:
        rate = _median([p.delivered_rate for p in runs]) or 0.0
        ratio = rate / futures["events_per_s"]
        lines.append(
            f"  {verdict(ratio >= TARGET_RATIO)}  >= {TARGET_RATIO:g}x the naive publisher's "
            f"events/s: {rate:,.0f} / {futures['events_per_s']:,.0f} = "
            f"{ratio:.1f}x (ingest was held to the offered rate; naive ran flat out)"
        )
        if sync:
            lines.append(
                f"        (vs sync .result() per event: {rate / sync['events_per_s']:,.0f}x)"
            )
    return lines


def unix_lines(phases: Sequence[Phase]) -> list[str]:
    """One line per unix qlen: runs within the bound, loss, CPU (not a target)."""
    by_qlen: dict[int | None, list[Phase]] = {}
    for p in phases:
        if p.transport == "unix":
            by_qlen.setdefault(p.qlen, []).append(p)
    return [
        f"        (unix, qlen {qlen}: {sum(p.meets(p.rate) for p in runs)} of {len(runs)} "
        f"within the bound, loss {_span([p.loss_pct for p in runs], 3)} %, "
        f"{_n(_median([p.cpu_us_per_event for p in runs]), 2)} µs/event)"
        for qlen, runs in by_qlen.items()
    ]


def ceiling(steps: Sequence[Phase]) -> Phase | None:
    """The highest step before the first one that missed the loss bound."""
    best = None
    for p in steps:
        if not p.meets(p.rate):
            break
        best = p
    return best


def ceiling_text(steps: Sequence[Phase]) -> str:
    """The ceiling as text: ">= N/s" when no step missed (the steps ran out first)."""
    top = ceiling(steps)
    if top is None:
        return f"below {steps[0].rate:,.0f}/s" if steps else "-"
    above = all(p.meets(p.rate) for p in steps)
    return f"{'>= ' if above else ''}{top.rate:,.0f}/s"


def why_missed(p: Phase) -> str:
    """A step's miss: lost events, or a rate the senders could not offer
    (then the machine, not the daemon, is what ran out)."""
    if p.offered_rate < 0.99 * p.rate:
        return (
            f"the senders reached only {p.offered_rate:,.0f}/s (machine busy "
            f"{_n(p.machine_busy_s / p.window_s if p.window_s else None, 2)} of "
            f"{os.cpu_count()} cores; "
            f"loss {p.loss_pct:.3f} %)"
        )
    drops = p.metrics.total("ingest_kernel_drops_total")
    return f"lost {p.loss_pct:.3f} % (kernel drops {drops:,})"


def standin_targets(steps: Sequence[Phase]) -> list[str]:
    if not steps:
        return ["  (no stand-in step was run)"]
    at = next((p for p in steps if p.rate == STANDIN_TARGET_RATE), None)
    if at is None:
        return [f"  MISS  no stand-in step at {STANDIN_TARGET_RATE:,}/s was run"]
    cpu = at.cpu_us_per_event
    missed = next((p for p in steps if not p.meets(p.rate)), None)
    cpus = ", ".join(f"{p.rate / 1000:g}k {_n(p.cpu_us_per_event, 2)}" for p in steps)
    return [
        f"  {verdict(at.meets(STANDIN_TARGET_RATE))}  UDP {STANDIN_TARGET_RATE:,}/s offered, "
        f"loss <= {TARGET_LOSS_PCT} %: offered {at.offered_rate:,.0f}/s, loss "
        f"{at.loss_pct:.3f} %" + ("" if at.verified else " (check incomplete)"),
        f"  {verdict(cpu is not None and cpu <= STANDIN_TARGET_CPU_US)}  daemon CPU <= "
        f"{STANDIN_TARGET_CPU_US:g} µs/event at {STANDIN_TARGET_RATE:,}/s: {_n(cpu, 2)} µs/event"
        f" (per step: {cpus})",
        f"        ceiling: {ceiling_text(steps)} offered with loss <= {TARGET_LOSS_PCT} %; "
        + (
            f"at {missed.rate:,.0f}/s {why_missed(missed)}"
            if missed
            else "no step missed: the ceiling is above the last step"
        ),
    ]


def side_by_side(udp: Sequence[Phase], steps: Sequence[Phase]) -> None:
    """The two runs in two columns, and which shows what: medians over the
    emulator run's UDP runs; the stand-in's step at its target rate."""
    runs = [p for p in udp if p.rcvbuf is None] or list(udp)
    top = ceiling(steps)
    at = next((p for p in steps if p.rate == STANDIN_TARGET_RATE), top)
    step = [at] if at else []

    def both(f: Callable[[Phase], float | None], digits: int = 2) -> tuple[str, str]:
        return _n(_median([f(p) for p in runs]), digits), _n(_median([f(p) for p in step]), digits)

    def p50(p: Phase) -> float | None:
        return p.verification.latency_ms(0.5)[0] if p.verification else None

    def cores(p: Phase) -> float | None:
        return p.machine_busy_s / p.window_s if p.window_s else None

    rows = [
        ("shows", ("verified delivery", "the daemon's ceiling")),
        ("Pub/Sub side", ("real emulator, niced", "FAKE, niced")),
        ("delivery checked by", ("Pull of every message", "seq of every message")),
        ("offered events/s (UDP)", both(lambda p: p.offered_rate, 0)),
        (
            "runs within the loss bound",
            (
                f"{sum(p.meets(TARGET_RATE) for p in runs)} of {len(runs)}",
                f"ceiling {ceiling_text(steps)}",
            ),
        ),
        ("loss % of offered", both(lambda p: p.loss_pct, 3)),
        ("daemon CPU µs/event", both(lambda p: p.cpu_us_per_event)),
        ("Pub/Sub side CPU µs/message", both(lambda p: p.server_us_per_message)),
        ("latency p50 ms", both(p50, 0)),
        ("machine busy (cores)", both(cores)),
    ]
    right = f"stand-in run, {at.rate:,.0f}/s" if at else "stand-in run"
    print(f"\nside by side\n  {'':<30}{'emulator run':>24}{right:>28}")
    for label, (left, value) in rows:
        print(f"  {label:<30}{left:>24}{value:>28}")


def _pairs(
    emulator: Sequence[Phase], standin: Sequence[Phase]
) -> list[tuple[str, list[Phase], list[Phase]]]:
    """(label, plain phases, metadata phases): the emulator run's UDP phases
    at the daemon's default rcvbuf (medians over the repeats), then each
    stand-in rate that has both."""
    out = []
    udp = [p for p in emulator if p.transport == "udp" and p.rcvbuf is None]
    plain = [p for p in udp if p.plain]
    meta = [p for p in udp if p.metadata]
    if plain and meta:
        rate = plain[0].rate
        out.append(
            (f"emulator run {rate / 1000:g}k/s, median of {len(plain)}/{len(meta)}", plain, meta)
        )
    for m in sorted(standin, key=lambda p: (p.rate, p.linger_ms or 0)):
        if m.metadata:
            same = [p for p in standin if p.plain and p.rate == m.rate]
            if same:
                linger = f", meta linger {m.linger_ms:g} ms" if m.linger_ms is not None else ""
                out.append((f"stand-in run {m.rate / 1000:g}k/s{linger}", same, [m]))
    return out


def metadata_diff(plain: Sequence[Phase], meta: Sequence[Phase]) -> float | None:
    """Metadata's daemon CPU µs/event over the plain path's (medians)."""
    a = _median([p.cpu_us_per_event for p in plain])
    b = _median([p.cpu_us_per_event for p in meta])
    return None if a is None or b is None else b - a


def plain_vs_metadata(emulator: Sequence[Phase], standin: Sequence[Phase]) -> list[str]:
    """Plain and metadata phases of the same run and rate, side by side: daemon
    CPU per event and its difference, loss, mean messages per Publish request
    and requests per second (medians where there are repeats); then the
    target lines. Empty when no run had both."""
    pairs = _pairs(emulator, standin)
    if not pairs:
        return []
    meta = next(m for _, _, ms in pairs for m in ms)
    assert meta.metadata is not None
    keys = meta.metadata.keys
    lines = [
        "",
        f"plain vs metadata (UDP; metadata: {len(meta.metadata.attributes)} attributes from "
        f"event fields, ordering key of "
        f"{keys} distinct values, 1 route taking {100 / keys:g} % to a 2nd topic)",
        f"  {'':<38}{'daemon CPU µs/event':>26}{'loss % of offered':>20}"
        f"{'events/request':>18}{'requests/s':>18}",
        f"  {'':<38}{'plain':>8}{'meta':>8}{'diff':>10}{'plain':>10}{'meta':>10}"
        f"{'plain':>9}{'meta':>9}{'plain':>9}{'meta':>9}",
    ]
    for label, plain, metas in pairs:

        def med(phases: Sequence[Phase], f: Callable[[Phase], float | None]) -> float | None:
            return _median([f(p) for p in phases])

        diff = metadata_diff(plain, metas)
        lines.append(
            f"  {label:<38}"
            f"{_n(med(plain, lambda p: p.cpu_us_per_event), 2):>8}"
            f"{_n(med(metas, lambda p: p.cpu_us_per_event), 2):>8}"
            f"{'-' if diff is None else f'{diff:+.2f}':>10}"
            f"{_n(med(plain, lambda p: p.loss_pct), 3):>10}"
            f"{_n(med(metas, lambda p: p.loss_pct), 3):>10}"
            f"{_n(med(plain, lambda p: p.events_per_request), 1):>9}"
            f"{_n(med(metas, lambda p: p.events_per_request), 1):>9}"
            f"{_n(med(plain, lambda p: p.requests_per_s)):>9}"
            f"{_n(med(metas, lambda p: p.requests_per_s)):>9}"
        )
        if len(plain) > 1 or len(metas) > 1:
            lines.append(
                f"  {'  ranges':<38}µs/event plain {_span([p.cpu_us_per_event for p in plain], 2)}"
                f", meta {_span([p.cpu_us_per_event for p in metas], 2)}; loss plain "
                f"{_span([p.loss_pct for p in plain], 3)}, meta "
                f"{_span([p.loss_pct for p in metas], 3)}"
            )
    wrong = sum(p.verification.wrong_metadata for _, _, ms in pairs for p in ms if p.verification)
    routed = [
        (p.verification.routed, p.delivered) for _, _, ms in pairs for p in ms if p.verification
    ]
    share = sum(r for r, _ in routed) / max(1, sum(d for _, d in routed))
    lines.append(
        f"  metadata checked on every delivered event: {wrong:,} with wrong attributes, "
        f"ordering key or topic; {100 * share:.2f} % arrived on the route's topic"
    )
    # The target is the defaults'; a longer linger's rows show what it buys.
    diffs = [
        (label, metadata_diff(plain, metas))
        for label, plain, metas in pairs
        if all(m.linger_ms is None for m in metas)
    ]
    known = [d for _, d in diffs if d is not None]
    ok = bool(known) and len(known) == len(diffs) and max(known) <= TARGET_METADATA_EXTRA_US
    lines.append(
        f"  {verdict(ok and not wrong)}  metadata costs <= {TARGET_METADATA_EXTRA_US:g} µs/event "
        "more daemon CPU than plain: "
        + "; ".join(f"{label} {'-' if d is None else f'{d:+.2f}'}" for label, d in diffs)
    )
    met = [p.meets(p.rate) for _, _, ms in pairs for p in ms]
    lines.append(
        f"        metadata phases within the loss bound ({TARGET_LOSS_PCT} %): "
        f"{sum(met)} of {len(met)}"
    )
    return lines


def dialect_groups(phases: Sequence[Phase]) -> list[tuple[float, Phase, list[Phase]]]:
    """(rate, the plain JSON phase, the dialect phases) for each rate that
    has both; a rate's last plain phase before its first dialect phase."""
    out = []
    for rate in sorted({p.rate for p in phases if p.fmt != "json"}):
        dialects = [p for p in phases if p.fmt != "json" and p.rate == rate]
        first = phases.index(dialects[0])
        plain = [
            p
            for p in phases[:first]
            if p.plain and p.rate == rate and p.transport == "udp" and p.rcvbuf is None
        ]
        if plain:
            out.append((rate, plain[-1], dialects))
    return out


def json_vs_dialects(phases: Sequence[Phase], where: str) -> list[str]:
    """JSON, GELF (zlib) and statsd steps of the same rate side by side:
    offered and delivered events/s, daemon CPU per event and its difference to
    JSON, loss, events per Publish request; then the note that every statsd
    sample is a Pub/Sub message. Empty when no rate had both."""
    groups = dialect_groups(phases)
    if not groups:
        return []
    lines = [
        "",
        f"json vs gelf vs statsd ({where}; UDP, one event per datagram: JSON events of ~126 "
        "bytes; GELF objects of ~170 bytes, zlib-compressed to ~145; DogStatsD counter lines "
        "of ~47 bytes, published as ~93-byte JSON events)",
        f"  {'':<22}{'offered/s':>11}{'delivered/s':>13}{'daemon µs/event':>17}{'vs json':>9}"
        f"{'loss %':>9}{'events/request':>16}{'sender µs/event':>17}",
    ]
    for rate, plain, dialects in groups:
        base = plain.cpu_us_per_event
        for p in [plain, *dialects]:
            cpu = p.cpu_us_per_event
            diff = "" if p is plain or cpu is None or base is None else f"{cpu - base:+.2f}"
            sender = p.senders.cpu_s / p.senders.attempted * 1e6 if p.senders.attempted else None
            check = "" if p.verified else " PARTIAL"
            lines.append(
                f"  {f'{rate / 1000:g}k/s {p.fmt}':<22}{_n(p.offered_rate):>11}"
                f"{_n(p.delivered_rate):>13}{_n(cpu, 2):>17}{diff:>9}"
                f"{_n(p.loss_pct, 3) + check:>9}{_n(p.events_per_request):>16}{_n(sender, 2):>17}"
            )
    statsd = [p for _, _, ds in groups for p in ds if p.fmt == "statsd"]
    if statsd:
        top = max(statsd, key=lambda p: p.rate)
        published = top.metrics.total("ingest_events_published_total")
        lines.append(
            "  note: ingest is not an aggregator: every statsd sample is one Pub/Sub message "
            f"(at {top.rate:,.0f} samples/s offered: {top.senders.ok:,} samples sent, "
            f"{published:,} messages published)"
        )
    return lines


# ------------------------------------------------------------------ JSON
def phase_figures(p: Phase) -> dict[str, Any]:
    """One phase's figures for the bench's JSON: what its table column shows,
    as numbers (None where the phase has no such figure)."""
    s, v, m = p.senders, p.verification, p.metrics
    p50 = p99 = top = None
    if v:
        p50, p99, top = v.latency_ms(0.5, 0.99, 1.0)
    return {
        "name": p.name,
        "config": p.config,
        "transport": p.transport,
        "rate": p.rate,
        "qlen": p.qlen,
        "rcvbuf": p.rcvbuf,
        "metadata_keys": p.metadata.keys if p.metadata else None,
        "linger_ms": p.linger_ms,
        "format": p.fmt,
        "stepping": p.stepping,
        "offered_events_per_s": p.offered_rate,
        "events_offered": s.attempted,
        "sent_ok": s.ok,
        "sender_eagain": s.eagain,
        "sender_errors": dict(s.errors),
        "sender_max_lag_ms": s.max_lag_ms,
        "sender_cpu_us_per_event": s.cpu_s / s.attempted * 1e6 if s.attempted else None,
        "received": p.received,
        "delivered": p.delivered,
        "verified": p.verified,
        "duplicates": v.duplicates if v else None,
        "foreign": v.foreign if v else None,
        "wrong_metadata": v.wrong_metadata if v and v.metadata_checked else None,
        "routed": v.routed if v and v.metadata_checked else None,
        "loss_pct": p.loss_pct,
        "delivered_events_per_s": p.delivered_rate,
        "latency_ms": {"p50": p50, "p99": p99, "max": top},
        "daemon_cpu_us_per_event": p.cpu_us_per_event,
        "daemon_cores": p.daemon_cpu_s / p.window_s if p.window_s else None,
        "daemon_peak_rss_kib": p.peak_rss_kib,
        "events_per_request": p.events_per_request,
        "requests_per_s": p.requests_per_s,
        "kernel_udp_drops": m.total("ingest_kernel_drops_total"),
        "server_cpu_us_per_message": p.server_us_per_message,
        "machine_busy_cores": p.machine_busy_s / p.window_s if p.window_s else None,
        "interrupt_cores": p.interrupts_s / p.window_s if p.window_s else None,
        "other_processes_cores": p.others_cores,
        "busy_before_cores": p.busy_before_cores,
        "drained": p.drained,
        "exit_code": p.exit_code,
        "warnings": list(p.warnings),
    }
