"""The daemon's cost across offered rates, beside google-cloud-pubsub's own publisher.

    python -m tools.bench rates [--rates 1000,7000] [--duration 3] [--no-emulator] ...

Web hosts send thousands of events a second, not the ceiling's hundreds of
thousands: this suite offers paced rates from 1,000 events/s up (``--rates``,
1k, 2k, 7k, 20k, 50k and 150k by default) and, at each, measures per
(target, publisher, mode):

- the publisher's **cores**: utime + stime of all its threads (/proc) from
  the step's start until everything sent was answered (for the daemon:
  drained, as tools/bench/harness.py measures it), divided by the seconds
  the events were sent over: what the rate costs a second, however long a
  slow server made the drain (``window_s`` is that whole span); and **µs
  of CPU per event** delivered;
- **Publish requests a second** (the daemon's ``ingest_publish_requests_total``
  from its /metrics; for google-cloud-pubsub the stand-in's own count, none
  on the emulator);
- **end-to-end latency** p50/p99: the send time inside each event to where
  it lands (the emulator's publish_time, the stand-in's arrival time);
- **delivered vs offered**: every sequence number checked, byte for byte
  (tools/testing/verify.py, or the stand-in's own check).

Publishers: ``ingest`` is a fresh ``ingest serve`` per step, fed over UDP by
tools.testing.loadgen and checked as tools/bench/harness.py's phases are
(its ``run_phase``). ``python`` is google-cloud-pubsub's
``PublisherClient.publish()`` per event in a subprocess of its own (this
module, ``peer``), paced by the same schedule (tools.testing.loadgen's
``run``), its futures all awaited; its CPU measured the same way from /proc.
A rate it cannot sustain (behind schedule, or its futures still unresolved
long after) is marked, and its higher rates in that mode are not run.

Modes: ``plain`` events; ``keys``, the bench's metadata (harness.py's: two
attribute fields, ``--ordering-key-field user`` over ``--keys`` (100) values
of ``"user":"u<seq % K>"``, one user routed to a second topic); the python
publisher sends the same attributes and ordering keys with
``enable_message_ordering=True`` (all to the first topic).

Targets: ``emulator`` (the real one; every message pulled back) and
``standin`` (tools/testing/fakepubsub.py) answering each Publish
``--answer-delay-ms`` (25) after it arrived, like a nearby region: a
publisher with one request in flight per ordering key batches by round
trips there. Both servers run at nice ``--server-nice`` (they stand in for
a remote service).

Also an idle row per target and mode (rate 0): the daemon's cores over
``--idle-seconds`` with no traffic.

Figures: ``rows``, one dict per (target, publisher, mode, rate), for a table;
``ok`` False when an ingest step's events are not all accounted: each one
the daemon read delivered once (byte for byte) or counted away by it; what
the kernel dropped before the daemon read it (an overloaded host) is the
rest of what was offered, shown as lost beside the socket's kernel drops.
The machine is shared: read the cores beside the machine's load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tools.bench import harness
from tools.bench.report import Phase
from tools.testing import loadgen
from tools.testing.daemon import STOPPED_RE, DaemonProcess
from tools.testing.emulator import Emulator, free_port
from tools.testing.fakepubsub import FakePubSub
from tools.testing.procfs import machine_cpu_s, process_cpu_s
from tools.testing.verify import Metadata, Verification

RATES = "1000,2000,7000,20000,50000,150000"
# Seconds per step. A fresh daemon's first traffic costs it ~0.1 s of CPU
# once (code paths run for the first time, the channel's first Publish): over
# 5 s that is 0.02 cores, as much as a low rate's whole steady cost, over
# 15 s under 0.007, so the figures say what a rate costs a second.
DURATION_S = 15.0
ANSWER_DELAY_MS = 25.0  # the stand-in's answer latency: a nearby region
KEYS = 100
IDLE_S = 3.0
TARGETS = ("emulator", "standin")
PUBLISHERS = ("ingest", "python")
MODES = ("plain", "keys")
WARMUP_MESSAGES = 100_000  # the emulator's JIT, before the first step
SEQ_STRIDE = harness.SEQ_STRIDE
# The python publisher keeps up when it finishes sending within this much of
# the schedule and its futures resolve within FUTURES_GRACE_S after.
BEHIND_FACTOR = 1.05
FUTURES_GRACE_S = 5.0
LAG_BOUND_MS = 250.0  # the furthest behind schedule a slot may start


@dataclass
class Row:
    """One (target, publisher, mode, rate): what the table shows."""

    target: str
    publisher: str
    mode: str
    rate: int  # offered events/s asked for (0: the idle row)
    seconds: float  # the sending's wall time, which the CPU is divided by (idle: the wait)
    window_s: float  # start -> everything answered (the daemon: drained), the CPU's span
    offered: int = 0  # events the sender attempted
    delivered: int = 0  # distinct events checked where they land
    duplicates: int = 0
    foreign: int = 0
    # The daemon's own account (ingest rows): what it read, and what it
    # counted away (dropped or rejected); the kernel's drops on its socket.
    received: int | None = None
    counted_away: int | None = None
    kernel_drops: int | None = None
    cpu_s: float = 0.0
    cores: float = 0.0
    cpu_us_per_event: float | None = None
    requests_per_s: float | None = None
    events_per_request: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    sustained: bool = True  # the publisher kept to the schedule and answered in time
    note: str = ""

    @property
    def accounted(self) -> bool:
        """Every event read was delivered or counted away, none twice or
        altered; the rest of what was offered the kernel dropped (an
        overloaded host loses datagrams: counted, so accounted)."""
        if self.duplicates or self.foreign:
            return False
        if self.received is None:
            return self.delivered == self.offered
        return self.delivered + (self.counted_away or 0) == self.received


class RecordingFake(FakePubSub):
    """The stand-in, keeping its last Report: its request count is the step's."""

    def __init__(self, log_path: str) -> None:
        super().__init__(log_path)
        self.last: dict[str, Any] = {}

    def report(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.last = super().report(*args, **kwargs)
        return self.last


# ------------------------------------------------------------ the peer process
class PublishingSender:
    """loadgen's Sender: each event one ``PublisherClient.publish()``, its
    ordering key the event's user (with ``keys``), its future kept."""

    def __init__(
        self, client: Any, topic: str, first: int, keys: int, attributes: dict[str, str]
    ) -> None:
        self.client, self.topic, self.keys, self.attributes = client, topic, keys, attributes
        self.seq = first
        self.futures: list[concurrent.futures.Future[str]] = []

    def send(self, data: bytes, /) -> object:
        if self.keys:
            key = loadgen.user_of(self.seq, self.keys)
            future = self.client.publish(self.topic, data, ordering_key=key, **self.attributes)
        else:
            future = self.client.publish(self.topic, data)
        self.seq += 1
        self.futures.append(future)
        return None


def peer(argv: Sequence[str]) -> int:
    """google-cloud-pubsub paced at one rate; one JSON report on stdout."""
    from google.cloud import pubsub_v1  # the peer process only: ~0.5 s to import

    parser = argparse.ArgumentParser(prog="python -m tools.bench.rates peer")
    parser.add_argument("topic")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--first-seq", type=int, required=True)
    parser.add_argument("--keys", type=int, default=0)
    args = parser.parse_args(argv)
    ordered = args.keys > 0
    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered)
    client = pubsub_v1.PublisherClient(publisher_options=options)
    # One publish first (not an event: counted foreign by the check), so that
    # channel setup is not part of the per-event cost.
    client.publish(args.topic, b"warm-up").result(timeout=60)
    attributes = dict(harness.METADATA_ATTRIBUTES) if ordered else {}
    sender = PublishingSender(client, args.topic, args.first_seq, args.keys, attributes)
    pid = os.getpid()
    cpu0, t0 = process_cpu_s(pid), time.monotonic()  # the schedule starts now
    sent = loadgen.run(
        sender,
        rate=args.rate,
        total=int(args.rate * args.seconds),
        first=args.first_seq,
        step=1,
        slot_s=0.001,
        start_at=t0,
        give_up_s=args.seconds * BEHIND_FACTOR + 0.5,
        keys=args.keys,
    )
    sent_at = time.monotonic()
    done, pending = concurrent.futures.wait(
        sender.futures, timeout=args.seconds + FUTURES_GRACE_S + 30
    )
    failed = sum(1 for f in done if f.exception() is not None)
    answered_s = time.monotonic() - sent_at
    cpu_s, wall_s = process_cpu_s(pid) - cpu0, time.monotonic() - t0
    client.stop()
    json.dump(
        {
            **sent,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "answered_s": answered_s,
            "failed": failed,
            "unresolved": len(pending),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


# ------------------------------------------------------------ the suite
def metadata_of(mode: str, keys: int, *, peer: bool) -> Metadata | None:
    """What a ``keys`` step's messages carry (the python publisher routes nothing)."""
    if mode != "keys":
        return None
    return Metadata(keys, harness.METADATA_ATTRIBUTES, "" if peer else harness.ROUTED_USER)


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """harness.run_phase's options: its defaults, with this suite's load."""
    base = harness.parse_args("standin", [])
    base.quiet_wait_s = args.quiet_wait_s
    base.drain_timeout_s = args.drain_timeout_s
    base.daemon_arg = list(args.daemon_arg)
    return base


def requests_of(v: Verification | None, fake: RecordingFake | None) -> int | None:
    """The stand-in's count of the Publish requests its last check saw."""
    if fake is None or v is None:
        return None
    return int(fake.last.get("requests", 0))


def ingest_step(
    bench: harness.Bench,
    *,
    seconds: float,
    target: str,
    mode: str,
    rate: int,
    index: int,
    keys: int,
) -> Row:
    metadata = metadata_of(mode, keys, peer=False)
    phase = Phase(f"rates-{target}-{mode}-{rate}", "udp", rate, metadata=metadata)
    harness.run_phase(bench, phase, index, seconds)
    v = phase.verification
    sending_s = round(phase.senders.elapsed_s, 3)
    row = Row(target, "ingest", mode, rate, sending_s, round(phase.window_s, 3))
    row.offered = phase.senders.attempted
    fill(row, v, phase.daemon_cpu_s)
    requests = phase.metrics.total("ingest_publish_requests_total")
    row.requests_per_s = requests / row.window_s if row.window_s else None
    row.events_per_request = row.delivered / requests if requests else None
    row.sustained = phase.drained and bool(v and v.complete)
    stopped = STOPPED_RE.search(phase.stopped_line or "")
    if stopped:
        row.received = int(stopped["received"])
        row.counted_away = int(stopped["dropped"]) + int(stopped["rejected"])
    row.kernel_drops = phase.metrics.total("ingest_kernel_drops_total")
    notes = [] if phase.drained else ["not drained"]
    if row.delivered < row.offered:
        notes.append(f"{row.offered - row.delivered:,} lost ({row.kernel_drops:,} kernel drops)")
    row.note = "; ".join(notes)
    return row


def fill(row: Row, v: Verification | None, cpu_s: float) -> None:
    """The checked delivery and the CPU of a step into ``row``."""
    if v is not None:
        row.delivered, row.duplicates, row.foreign = v.distinct, v.duplicates, v.foreign
        p50, p99 = v.latency_ms(0.5, 0.99)
        row.latency_p50_ms, row.latency_p99_ms = p50, p99
    row.cpu_s = round(cpu_s, 4)
    row.cores = cpu_s / row.seconds if row.seconds else 0.0
    row.cpu_us_per_event = cpu_s / row.delivered * 1e6 if row.delivered else None


def peer_step(
    bench: harness.Bench,
    *,
    seconds: float,
    target: str,
    mode: str,
    rate: int,
    index: int,
    keys: int,
    fake: RecordingFake | None,
) -> Row:
    args = bench.args
    first_seq = index * SEQ_STRIDE
    expected = int(rate * seconds)
    metadata = metadata_of(mode, keys, peer=True)
    session = bench.sink.session(
        f"rates-{target}-py-{mode}-{rate}", first_seq, expected, metadata, "json"
    )
    with session as (topics, check):
        topic = f"projects/{harness.PROJECT}/topics/{topics[0]}"
        harness.wait_for_quiet(args.quiet_wait_s)
        command = [sys.executable, "-m", "tools.bench.rates", "peer", topic]
        command += ["--rate", str(rate), "--seconds", str(seconds), "--first-seq", str(first_seq)]
        command += ["--keys", str(keys if mode == "keys" else 0)]
        proc = bench.spawn(command, env=bench.env())
        out, _ = proc.communicate(timeout=seconds * 3 + FUTURES_GRACE_S + 120)
        if proc.returncode:
            raise RuntimeError(f"the python publisher exited with {proc.returncode}")
        r = json.loads(out)
        v = check()
    row = Row(target, "python", mode, rate, round(r["elapsed_s"], 3), round(r["wall_s"], 3))
    row.offered = r["attempted"]
    fill(row, v, r["cpu_s"])
    row.foreign = max(0, row.foreign - 1)  # its warm-up message
    requests = requests_of(v, fake)
    if requests:
        requests -= 1  # the warm-up's
        row.requests_per_s = requests / row.window_s
        row.events_per_request = row.delivered / requests if requests else None
    behind = r["elapsed_s"] > seconds * BEHIND_FACTOR or r["max_lag_ms"] > LAG_BOUND_MS
    late = r["answered_s"] > FUTURES_GRACE_S or r["unresolved"] or r["failed"]
    row.sustained = bool(r["completed"]) and not behind and not late
    if not row.sustained:
        row.note = (
            f"cannot sustain: sent {r['attempted']:,} of {expected:,} in {r['elapsed_s']:.1f} s, "
            f"{r['max_lag_ms']:.0f} ms behind; answers {r['answered_s']:.1f} s after, "
            f"{r['failed']} failed, {r['unresolved']} unresolved"
        )
    return row


def idle_row(bench: harness.Bench, target: str, mode: str, seconds: float) -> Row:
    """A fresh daemon with nothing to do: its cores over ``seconds``."""
    workdir = bench.workdir
    metrics_port = free_port()
    topics = [f"rates-idle-{mode}", f"rates-idle-{mode}-routed"]
    flags = harness.metadata_flags(metadata_of(mode, KEYS, peer=False), topics)
    with contextlib.ExitStack() as stack:
        if isinstance(bench.sink, harness.EmulatorSink):
            for name in topics:
                stack.enter_context(bench.sink.topic(name))
        daemon = DaemonProcess(
            [
                f"--project={harness.PROJECT}",
                f"--topic={topics[0]}",
                *flags,
                f"--udp=127.0.0.1:{free_port()}",
                f"--metrics=127.0.0.1:{metrics_port}",
                *bench.args.daemon_arg,
            ],
            os.path.join(workdir, f"idle-{target}-{mode}.log"),
            emulator_host=bench.sink.host,
        )
        try:
            daemon.wait_ready(60)
            time.sleep(0.5)  # past start-up's own work
            cpu0, t0 = process_cpu_s(daemon.pid), time.monotonic()
            time.sleep(seconds)
            cpu_s, wall = process_cpu_s(daemon.pid) - cpu0, time.monotonic() - t0
        finally:
            daemon.shut_down()
    row = Row(target, "ingest", mode, 0, round(wall, 3), round(wall, 3))
    row.cpu_s = round(cpu_s, 4)
    row.cores = cpu_s / wall
    return row


@contextlib.contextmanager
def target_bench(
    name: str, args: argparse.Namespace, workdir: str
) -> Iterator[tuple[harness.Bench, RecordingFake | None]]:
    """The target's server started (niced) and a harness.Bench on it."""
    with contextlib.ExitStack() as stack:
        fake: RecordingFake | None = None
        sink: harness.Sink
        if name == "emulator":
            admin = Emulator(log_path=os.path.join(workdir, "emulator.log"))
            stack.callback(admin.stop)
            admin.start()
            if admin.proc and args.server_nice:
                harness.deprioritise(admin.proc.pid, args.server_nice)
            sink = harness.EmulatorSink(admin, admin.proc.pid if admin.proc else None, 120.0)
            print(f"\nemulator at {admin.host}; warming up ({args.warmup_messages:,})", flush=True)
            harness.warm_up(sink, args.warmup_messages)
        else:
            fake = RecordingFake(os.path.join(workdir, "fakepubsub.log"))
            stack.callback(fake.stop)
            fake.start("c", answer_delay_ms=args.answer_delay_ms)
            assert fake.proc is not None
            if args.server_nice:
                harness.deprioritise(fake.proc.pid, args.server_nice)
            print(
                f"\nstand-in ({fake.engine}) at {fake.host}, answering "
                f"{args.answer_delay_ms:g} ms after each Publish arrives",
                flush=True,
            )
            sink = harness.FakeSink(fake)
        bench = harness.Bench(bench_args(args), sink, workdir)
        stack.callback(bench.stop_children)
        yield bench, fake


def run_target(name: str, args: argparse.Namespace, workdir: str) -> list[Row]:
    rows: list[Row] = []
    indices = iter(range(1, 10_000))
    with target_bench(name, args, workdir) as (bench, fake):
        for mode in args.modes:
            if args.idle_seconds > 0:
                rows.append(idle_row(bench, name, mode, args.idle_seconds))
                print_row(rows[-1])
            peer_stopped_at: int | None = None
            for rate in args.rates:
                for publisher in args.publishers:
                    if publisher == "python" and peer_stopped_at is not None:
                        continue
                    step: dict[str, Any] = {
                        "seconds": args.duration,
                        "target": name,
                        "mode": mode,
                        "rate": rate,
                        "index": next(indices),
                        "keys": args.keys,
                    }
                    if publisher == "ingest":
                        row = ingest_step(bench, **step)
                    else:
                        row = peer_step(bench, **step, fake=fake)
                        if not row.sustained:
                            peer_stopped_at = rate
                    rows.append(row)
                    print_row(rows[-1])
            if peer_stopped_at is not None:
                print(f"  (python publisher, {mode}: not run above {peer_stopped_at:,}/s)")
    return rows


# ------------------------------------------------------------ the report
HEADER = (
    f"{'target':<9} {'publisher':<9} {'mode':<5} {'offered/s':>9} {'cores':>6} {'µs/event':>9} "
    f"{'req/s':>7} {'ev/req':>7} {'p50 ms':>7} {'p99 ms':>8} {'delivered/offered':>19} "
    f"{'span s':>6}  note"
)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: Row) -> str:
    accounted = f"{row.delivered:,}/{row.offered:,}" if row.rate else "-"
    mark = "" if row.sustained else " *"
    return (
        f"{row.target:<9} {row.publisher:<9} {row.mode:<5} {row.rate:>9,} {row.cores:>6.3f} "
        f"{_num(row.cpu_us_per_event, '.1f'):>9} {_num(row.requests_per_s, ',.0f'):>7} "
        f"{_num(row.events_per_request, ',.1f'):>7} {_num(row.latency_p50_ms, '.1f'):>7} "
        f"{_num(row.latency_p99_ms, '.1f'):>8} {accounted:>19} {row.window_s:>6.1f}{mark}"
        f"  {row.note}"
    ).rstrip()


def print_row(row: Row) -> None:
    print(f"  {format_row(row)}", flush=True)


def print_table(rows: Sequence[Row], args: argparse.Namespace) -> None:
    print(
        f"\nRATES: {args.duration:g} s per step; cores = CPU (utime+stime, all threads, until "
        "all was answered) / seconds of sending; req/s over start -> all answered; "
        f"keys = {args.keys} ordering keys with attributes; stand-in answers after "
        f"{args.answer_delay_ms:g} ms; * = the publisher could not sustain the rate"
    )
    print(HEADER)
    ordered = sorted(
        rows, key=lambda r: (TARGETS.index(r.target), MODES.index(r.mode), r.rate, r.publisher)
    )
    for row in ordered:
        print(format_row(row))


# ------------------------------------------------------------ flags, run
def _names(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        if unknown := set(names) - set(allowed):
            raise argparse.ArgumentTypeError(f"unknown {','.join(sorted(unknown))}")
        return names

    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench rates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rates",
        type=harness._ints,
        default=harness._ints(RATES),
        metavar="N[,N...]",
        help=f"offered events/s, one step each (default {RATES})",
    )
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds per step")
    # Flags, not names: the bench reads "emulator" and "standin" as its suites'.
    parser.add_argument("--no-emulator", action="store_true", help="skip the emulator target")
    parser.add_argument("--no-standin", action="store_true", help="skip the stand-in target")
    parser.add_argument("--publishers", type=_names(PUBLISHERS), default=list(PUBLISHERS))
    parser.add_argument("--modes", type=_names(MODES), default=list(MODES))
    parser.add_argument("--keys", type=int, default=KEYS, help="ordering keys of the keys mode")
    parser.add_argument(
        "--answer-delay-ms",
        type=float,
        default=ANSWER_DELAY_MS,
        help="the stand-in answers each Publish this long after it arrived",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=IDLE_S, help="the idle row's length (0: none)"
    )
    parser.add_argument("--warmup-messages", type=int, default=WARMUP_MESSAGES)
    parser.add_argument("--server-nice", type=int, default=19)
    parser.add_argument("--quiet-wait-s", type=float, default=2.0)
    parser.add_argument("--drain-timeout-s", type=float, default=60.0)
    parser.add_argument(
        "--daemon-arg", action="append", default=[], help="extra `ingest serve` flag (repeat)"
    )
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys: must be >= 1")
    skipped = {"emulator": args.no_emulator, "standin": args.no_standin}
    args.targets = [t for t in TARGETS if not skipped[t]]
    return args


def run(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="ingest-rates-")
    busy0 = machine_cpu_s()[0]
    started = time.monotonic()
    rows: list[Row] = []
    try:
        print(HEADER)
        for target in args.targets:
            rows += run_target(target, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine_cores = (machine_cpu_s()[0] - busy0) / (time.monotonic() - started)
    print_table(rows, args)
    print(f"machine: {machine_cores:.2f} cores busy on average over the run (all processes)")
    lost = [r for r in rows if r.publisher == "ingest" and r.rate and not r.accounted]
    for row in lost:
        print(f"NOT ACCOUNTED: {format_row(row)}")
    return {
        "ok": not lost,
        "duration_s": args.duration,
        "keys": args.keys,
        "answer_delay_ms": args.answer_delay_ms,
        "machine_busy_cores": round(machine_cores, 3),
        "rows": [asdict(r) for r in rows],
    }


if __name__ == "__main__":
    if sys.argv[1:2] != ["peer"]:
        raise SystemExit(
            "usage: python -m tools.bench.rates peer TOPIC ... (the suite: tools.bench)"
        )
    raise SystemExit(peer(sys.argv[2:]))
