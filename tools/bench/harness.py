"""The daemon's suites of the bench: against the real emulator, and against a cheap fake.

    python -m tools.bench emulator [FLAG...]    (--help: its flags)
    python -m tools.bench standin [FLAG...]

Two runs, each a suite, each reported by tools/bench/report.py (run both in
one bench, ``python -m tools.bench emulator standin``, and each prints its
own table; their JSON figures sit side by side):

1. The emulator run — verified delivery. Machine facts; start the emulator
   (unless PUBSUB_EMULATOR_HOST is set) and warm its JIT up with raw
   publishes; the naive alternative, google-cloud-pubsub ``publish()`` per
   event (tools.bench.naive); then per transport, ``--repeat`` times, a fresh
   ``ingest serve --udp ... --unix ...`` fed at a fixed offered rate by
   tools.testing.loadgen, drained (read from its /metrics), stopped with SIGTERM, and
   verified by pulling its subscription to the end (tools.testing.verify: every
   sequence number, byte for byte). The emulator's own CPU (more than the
   daemon's per message) is spent on the same 2 cores, so this run measures
   the emulator as much as the daemon.
2. The stand-in run — the daemon's ceiling. A FAKE Publish server
   (tools/testing/fakepubsub.py: it exists because the emulator's CPU dominates a
   2-core box; in production Pub/Sub is remote and costs the host nothing),
   reached the same way (PUBSUB_EMULATOR_HOST, insecure gRPC), answers every
   Publish and checks every event's sequence number. The offered UDP rate is
   stepped up (``--standin-rates``) until a step loses more than the bound.

Flags that shape the daemon and its load (``--keys``, ``--senders``,
``--slot-ms``, ``--sender-engine``, ``--emulator-nice``, ``--daemon-arg``,
``--quiet-wait-s``, ``--drain-timeout-s``) are both suites'; the others are
their own suite's.

Both runs have a *metadata* variant of their UDP phases, reported beside the
plain ones (``plain vs metadata``: daemon CPU per event and the difference,
loss, mean messages per Publish request, requests/s): the same daemon and rate
with ``--attribute-field method=method --attribute-field status=status
--ordering-key-field user --route <topic>-routed:user=u0``, fed events that
also carry ``"user":"u<seq % K>"`` (tools.testing.loadgen ``--keys K``; ``--keys``
here, 100 by default): K ordering keys, so K lanes, and 1/K of the events
routed to a second topic. The emulator run has one in each of its first
``--metadata-repeat`` (3) repeats, in turn with the plain phase, and verifies
both topics' subscriptions into one count, each message's attributes,
ordering key and topic checked too. The stand-in run has a metadata step
after the plain step at each ``--standin-metadata-rates`` rate the stepping
reaches; the rates below the stepping's first (50k and 100k/s: the metadata
daemon keeps up there on 2 cores, and with many keys its requests are
smallest, so the per-request cost shows) get a plain step of their own
first; the fake checks the same. Each metadata step is run again with a
longer ``--batch-linger-ms`` (``--standin-metadata-lingers-ms``, 50 by
default): a request holds one ordering key, the linger is per lane, so the
linger bounds the requests a second (lanes with traffic / linger), and these
rows show what it buys in CPU and costs in latency. Target: metadata costs at
most 1.5 µs of daemon CPU per event more than the plain path, at the
defaults.

The stand-in run also compares the input formats (``json vs gelf vs
statsd``): at each ``--dialect-rates`` rate (50k and 100k/s by default, where
every format keeps up on 2 cores, so the comparison is CPU per event, not
loss) the plain JSON step is followed by a GELF step and a statsd step, each
a fresh daemon with the defaults (every listener takes every format), fed by
tools.testing.loadgen ``--format gelf`` (graypy's message: a ~170-byte GELF object,
``_seq`` and two ``_`` fields, zlib-compressed, one per datagram) or
``--format statsd`` (``bench.requests:<seq>|c|#env:prod,route:/api``, one
line per datagram, as the JSON events are one per datagram). The fake
checks every event in the shape ingest publishes it: the inflated GELF
object byte for byte (seq from ``_seq``, latency from ``timestamp``), the
JSON event ingest writes for a statsd line (seq from ``value``; no send
time, so no latency). Reported per format: offered and delivered events/s,
daemon CPU µs per event and the difference to JSON, loss, events per
Publish request, the sender's CPU per event; and that every statsd sample
was one Pub/Sub message (ingest does not aggregate). The rates below the
stepping's first share the plain step with the metadata comparison (plain,
gelf, statsd, metadata: the formats right after the plain step, as their
differences are the smaller); 4 steps of ``--standin-seconds`` (~7 s each with
start-up and drain on a quiet machine), ~30 s at the defaults. ``--dialect-rates ''`` skips
them. The emulator run has them only when asked (``--emulator-dialects
gelf,statsd``: one phase each at ``--rate`` after the first repeat's plain
phase, every message pulled and checked as above; the emulator's CPU per
message dominates there, so they are off by default).

Both servers run niced (``--emulator-nice``): they stand in for a remote
service. Unix datagram senders get EAGAIN once 11 datagrams wait
(net.unix.max_dgram_qlen, 10 by default, per network namespace). Run as root
where unshare(1) works, the bench re-executes itself in a new network namespace
(servers included, on the namespace's own loopback) and runs the unix
transport at the host's value and at each ``--unix-qlen``, without touching
the host's sysctls. ``--netns no`` stays put.

Everything it starts is stopped and its temp directory removed on the way out,
Ctrl-C and SIGTERM included; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ingest.publish.pubsub import RequestEncoder
from ingest.receive.kernel import UNIX_QLEN_RECOMMENDED
from tools.bench import report as rep
from tools.bench.report import QUIET_BUSY_CORES, Phase
from tools.bench.suites import figures_from
from tools.testing.daemon import DaemonProcess
from tools.testing.emulator import Emulator, free_port
from tools.testing.fakepubsub import FakePubSub
from tools.testing.procfs import group_cpu_s, machine_cpu_s, peak_rss_kib, process_cpu_s, read_text
from tools.testing.verify import Metadata, Verification, verify

RECOMMENDED_QLEN = UNIX_QLEN_RECOMMENDED  # what the daemon's warning and the drop-in say
PROJECT = "ingest-bench"
WARMUP_MESSAGES = 600_000  # its publish path costs 12 µs/msg cold, ~5 µs after ~400k
QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"
SEQ_STRIDE = 100_000_000  # phase i sends sequence numbers from i * SEQ_STRIDE
STANDIN_RATES = "150000,200000,250000,300000,350000,400000"
STANDIN_METADATA_RATES = "50000,100000,150000,200000"
# Stand-in run: metadata steps again at each of these --batch-linger-ms (ms):
# with many keys a longer linger bounds the requests a second (lanes / linger).
STANDIN_METADATA_LINGERS_MS = "50"
DIALECT_RATES = "50000,100000"  # stand-in: json, gelf and statsd steps at each
DIALECTS = ("gelf", "statsd")  # tools.testing.loadgen --format values besides json
KEYS = 100  # distinct ordering keys (users) of the metadata phases
METADATA_REPEATS = 3  # emulator run: metadata phases in this many of its UDP repeats
ROUTED_USER = "u0"  # the metadata phases route this user's events to a second topic
# What the metadata daemon makes of every loadgen event (method "GET", status 200).
METADATA_ATTRIBUTES = (("method", "GET"), ("status", "200"))

T = TypeVar("T")
Check = Callable[[], Verification]  # what arrived of the phase's sequence numbers


# ---------------------------------------------------------------- sinks
class Sink(Protocol):
    """Where the daemons of a run publish: the emulator or the fake."""

    @property
    def host(self) -> str: ...

    def cpu_s(self) -> float | None: ...

    def session(
        self, name: str, first_seq: int, expected: int, metadata: Metadata | None, fmt: str
    ) -> contextlib.AbstractContextManager[tuple[list[str], Check]]:
        """Topic IDs for the phase's daemon (with ``metadata``: its --topic and
        its route's), and how to check what arrived (events sent as ``fmt``)."""
        ...


@dataclass
class EmulatorSink:
    """The real emulator: a topic and subscription per phase, every message pulled."""

    admin: Emulator
    pgid: int | None  # None: an external emulator (PUBSUB_EMULATOR_HOST)
    verify_deadline_s: float

    @property
    def host(self) -> str:
        return self.admin.host

    def cpu_s(self) -> float | None:
        return group_cpu_s(self.pgid) if self.pgid else None

    @contextlib.contextmanager
    def topic(self, name: str) -> Iterator[tuple[str, str]]:
        """A topic and its subscription (made before any publish); the
        subscription is deleted after, since the emulator keeps what it holds."""
        topic = f"projects/{PROJECT}/topics/{name}"
        subscription = f"projects/{PROJECT}/subscriptions/{name}-verify"
        self.admin.create_topic(topic)
        self.admin.create_subscription(subscription, topic)
        try:
            yield topic, subscription
        finally:
            with contextlib.suppress(Exception):
                self.admin.delete_subscription(subscription)

    @contextlib.contextmanager
    def session(
        self, name: str, first_seq: int, expected: int, metadata: Metadata | None, fmt: str
    ) -> Iterator[tuple[list[str], Check]]:
        names = [name, f"{name}-routed"] if metadata else [name]
        with contextlib.ExitStack() as stack:
            made = [stack.enter_context(self.topic(n)) for n in names]
            subscriptions = [subscription for _, subscription in made]
            yield (
                [topic.rpartition("/")[2] for topic, _ in made],
                lambda: verify(
                    self.admin.channel,
                    subscriptions,
                    first_seq,
                    expected,
                    self.verify_deadline_s,
                    metadata=metadata,
                    fmt=fmt,
                ),
            )


@dataclass
class FakeSink:
    """The stand-in: every topic exists; its Report checks each sequence number."""

    fake: FakePubSub

    @property
    def host(self) -> str:
        return self.fake.host

    def cpu_s(self) -> float | None:
        return group_cpu_s(self.fake.proc.pid) if self.fake.proc else None

    def _check(self, first_seq: int, expected: int) -> Verification:
        r = self.fake.report(0, 0)
        return Verification(
            first_seq=first_seq,
            expected=expected,
            distinct=r["distinct"],
            duplicates=r["duplicates"],
            foreign=r["foreign"],
            pulled=r["messages"],
            complete=not r["unchecked"],
            elapsed_s=r["check_cpu_s"],
            last_publish_us=r["last_us"],
            # Not one per event: the stand-in's 1,001 quantiles (0.1 % steps,
            # then the maximum), which latency_ms indexes as it would all.
            latencies_us=r["latency_quantiles_us"],
            metadata_checked=r["metadata_checked"],
            wrong_metadata=r["wrong_metadata"],
            routed=r["routed"],
        )

    @contextlib.contextmanager
    def session(
        self, name: str, first_seq: int, expected: int, metadata: Metadata | None, fmt: str
    ) -> Iterator[tuple[list[str], Check]]:
        names = [name, f"{name}-routed"] if metadata else [name]
        # Forgets what came before; arms the check (every topic exists here).
        self.fake.report(first_seq, expected, metadata, names[-1], fmt=fmt)
        yield names, lambda: self._check(first_seq, expected)


# ---------------------------------------------------------------- phases
@dataclass
class Bench:
    """What every phase of a run needs: options, the server, a scratch directory."""

    args: argparse.Namespace
    sink: Sink
    workdir: str
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def in_netns(self) -> bool:
        return bool(self.args.in_netns)

    def env(self) -> dict[str, str]:
        return dict(os.environ, PUBSUB_EMULATOR_HOST=self.sink.host)

    def spawn(self, command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **kwargs)
        self.children.append(proc)
        return proc

    def stop_children(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def set_unix_qlen(bench: Bench, qlen: int) -> None:
    """Only ever in the bench's own network namespace, never the host's."""
    if not bench.in_netns or os.readlink("/proc/self/ns/net") == bench.args.in_netns:
        raise RuntimeError("refusing to change net.unix.max_dgram_qlen outside our namespace")
    with open(QLEN_PATH, "w") as fh:
        fh.write(str(qlen))


def run_senders(
    bench: Bench,
    phase: Phase,
    target: list[str],
    *,
    seconds: float,
    first_seq: int,
    start_at: float,
) -> None:
    args = bench.args
    command = [
        sys.executable,
        "-m",
        "tools.testing.loadgen",
        *target,
        "--engine",
        args.sender_engine,
    ]
    command += ["--rate", str(phase.rate / args.senders), "--seconds", str(seconds)]
    command += ["--slot-ms", str(args.slot_ms), "--first-seq", str(first_seq)]
    command += ["--count", str(args.senders), "--start-at", repr(start_at)]
    if phase.metadata:
        command += ["--keys", str(phase.metadata.keys)]
    if phase.fmt != "json":
        command += ["--format", phase.fmt]
    procs = [bench.spawn([*command, "--index", str(i)]) for i in range(args.senders)]
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds * 3 + 30)
        if proc.returncode:
            raise RuntimeError(f"tools.testing.loadgen exited with {proc.returncode}")
        phase.senders.add(json.loads(out))


def wait_for_quiet(timeout_s: float) -> float:
    """Wait (bounded) until the machine is nearly idle; its busy cores then.

    Other work on the 2 cores (a test run, another benchmark) would be
    measured as ours; a phase starts on a quiet machine when it can."""
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        before = machine_cpu_s()[0]
        time.sleep(0.5)
        busy = (machine_cpu_s()[0] - before) / 0.5
        if busy < QUIET_BUSY_CORES or time.monotonic() > deadline:
            return busy
        if not said:
            print(f"  machine busy ({busy:.2f} cores): waiting up to {timeout_s:g} s", flush=True)
            said = True


def run_phase(bench: Bench, phase: Phase, index: int, seconds: float) -> Phase:
    """A fresh daemon, a fixed offered rate, drain, SIGTERM, check everything."""
    args = bench.args
    first_seq = index * SEQ_STRIDE
    unix_path = os.path.join(bench.workdir, f"{phase.name}.sock")
    udp_port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    metrics_port = free_port()
    queue_events = max(1_000_000, int(phase.rate * seconds * 2))  # never the bottleneck
    if phase.qlen is not None and bench.in_netns:
        set_unix_qlen(bench, phase.qlen)  # the daemon's unix socket inherits it
    phase.qlen = int(read_text(QLEN_PATH) or 0) or None
    rcvbuf = [f"--udp-rcvbuf-bytes={phase.rcvbuf}"] if phase.rcvbuf else []
    linger = [f"--batch-linger-ms={phase.linger_ms:g}"] if phase.linger_ms is not None else []
    sink = bench.sink
    expected = int(phase.rate / args.senders * seconds) * args.senders
    session = sink.session(f"bench-{phase.name}", first_seq, expected, phase.metadata, phase.fmt)
    with session as (topics, check):
        daemon = DaemonProcess(
            [
                f"--project={PROJECT}",
                f"--topic={topics[0]}",
                *metadata_flags(phase.metadata, topics),
                f"--udp=127.0.0.1:{udp_port}",
                f"--unix={unix_path}",
                f"--metrics=127.0.0.1:{metrics_port}",
                f"--queue-max-events={queue_events}",
                f"--queue-max-bytes={queue_events * 256}",
                *rcvbuf,
                *linger,
                *args.daemon_arg,
            ],
            os.path.join(bench.workdir, f"{phase.name}.log"),
            emulator_host=bench.sink.host,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )
        try:
            daemon.wait_ready(60)
            phase.busy_before_cores = wait_for_quiet(args.quiet_wait_s)
            target = ["--udp", f"127.0.0.1:{udp_port}"]
            if phase.transport == "unix":
                target = ["--unix", unix_path]
            cpu0, server0, (busy0, irq0) = (
                process_cpu_s(daemon.pid),
                sink.cpu_s(),
                machine_cpu_s(),
            )
            start_at = time.monotonic() + 1.0  # once every sender has imported
            run_senders(
                bench, phase, target, seconds=seconds, first_seq=first_seq, start_at=start_at
            )
            phase.drained, phase.metrics = daemon.wait_drained(args.drain_timeout_s)
            phase.window_s = time.monotonic() - start_at
            phase.daemon_cpu_s = process_cpu_s(daemon.pid) - cpu0
            server1 = sink.cpu_s()
            if server0 is not None and server1 is not None:
                phase.server_cpu_s = server1 - server0
            busy1, irq1 = machine_cpu_s()
            phase.machine_busy_s, phase.interrupts_s = busy1 - busy0, irq1 - irq0
            phase.peak_rss_kib = peak_rss_kib(daemon.pid)
        finally:
            phase.exit_code = daemon.shut_down()
            phase.stopped_line = daemon.stopped_line()
            phase.warnings = daemon.warnings()
        phase.verification = check()
    return phase


def metadata_flags(metadata: Metadata | None, topics: list[str]) -> list[str]:
    """The metadata phase's `ingest serve` flags (none for a plain phase):
    attributes from two event fields, the ordering key from ``user``, and
    one route, ``user`` = ``metadata.routed``, to the second topic."""
    if metadata is None:
        return []
    flags = [f"--attribute-field={key}={key}" for key, _ in metadata.attributes]
    flags.append("--ordering-key-field=user")
    flags.append(f"--route={topics[1]}:user={metadata.routed}")
    return flags


def metadata_of(args: argparse.Namespace) -> Metadata:
    return Metadata(args.keys, METADATA_ATTRIBUTES, ROUTED_USER)


def run_naive(bench: Bench, mode: str, seconds: float) -> dict[str, float]:
    assert isinstance(bench.sink, EmulatorSink)
    with bench.sink.topic(f"bench-naive-{mode}") as (topic, _):
        command = [sys.executable, "-m", "tools.bench.naive", topic, "--mode", mode]
        proc = bench.spawn([*command, "--seconds", str(seconds)], env=bench.env())
        out, _ = proc.communicate(timeout=seconds * 10 + 60)
        if proc.returncode:
            raise RuntimeError(f"tools.bench.naive --mode {mode} exited with {proc.returncode}")
        result: dict[str, float] = json.loads(out)
        return result


def warm_up(sink: EmulatorSink, messages: int) -> None:
    """Raw batched publishes first, so that no phase pays for the emulator's JIT."""
    with sink.topic("bench-warmup") as (topic, _):
        publish = sink.admin.channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
        encoder = RequestEncoder(topic)
        request = encoder.encode([b'{"warm":"up","pad":"%0100d"}' % i for i in range(1000)])
        for _ in range(messages // 1000):
            publish(request, timeout=30)


# ---------------------------------------------------------------- report
def machine_facts(args: argparse.Namespace) -> list[tuple[str, str]]:
    model = re.search(r"model name\s*:\s*(.*)", read_text("/proc/cpuinfo") or "")
    namespace = "host"
    if args.in_netns:
        namespace = "own (unshare --net: the host's sysctls are untouched)"
    return [
        ("nproc", f"{os.cpu_count()} ({model.group(1) if model else '?'})"),
        ("kernel, python", f"{platform.release()}, {platform.python_version()}"),
        ("load average at start", " ".join((read_text("/proc/loadavg") or "?").split()[:3])),
        ("net.core.rmem_max", read_text("/proc/sys/net/core/rmem_max") or "?"),
        ("net.core.rmem_default", read_text("/proc/sys/net/core/rmem_default") or "?"),
        ("net.unix.max_dgram_qlen (host)", args.host_qlen or read_text(QLEN_PATH) or "?"),
        ("network namespace", namespace),
    ]


def print_naive(naive: dict[str, dict[str, float]]) -> None:
    futures, sync = naive.get("futures"), naive.get("sync")
    if not (futures or sync):
        return
    print("\nnaive alternative: google-cloud-pubsub PublisherClient.publish() per event")
    for label, r in (("futures, default batching", futures), ("sync, .result() per event", sync)):
        if r:
            latency = f", {r['latency_ms']:.2f} ms/event" if r.get("latency_ms") else ""
            print(
                f"  {label:<28} {r['events']:>8,.0f} events in {r['elapsed_s']:.1f} s: "
                f"{r['events_per_s']:>8,.0f} events/s, {r['cpu_us_per_event']:.0f} µs CPU/event"
                f"{latency}"
            )


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    all_steps: list[Phase],
    naive: dict[str, dict[str, float]],
    standin_engine: str,
) -> None:
    # The plain path's targets, and the side by side, are the plain phases'.
    udp = [p for p in phases if p.transport == "udp" and p.plain]
    steps = [p for p in all_steps if p.stepping and p.plain]
    if phases:
        rep.print_table(
            f"EMULATOR RUN (verified delivery): fixed offered rate for {args.seconds:g} s per "
            f"phase ({args.senders} sender process(es), {args.slot_ms:g} ms slots; emulator at "
            f"nice {args.emulator_nice}); delivery verified by pulling EVERY message",
            phases,
        )
        rep.print_daemon_lines(phases)
        rep.print_repeats(phases)
        print_naive(naive)
    if steps:
        rep.print_table(
            f"STAND-IN RUN (the daemon's ceiling): a FAKE Publish server (tools/testing/fakepubsub.py, "
            f"{standin_engine}, nice {args.emulator_nice}) instead of the emulator; UDP, "
            f"{args.standin_seconds:g} s per step; every event's sequence number checked by the "
            "fake"
            + (
                "; the metadata (-meta) and format (-gelf, -statsd) steps, and plain steps "
                "below the first rate, are not part of the stepping"
                if args.keys or args.dialect_rates
                else ""
            ),
            all_steps,
        )
        rep.print_daemon_lines(all_steps)
    print("\ntargets")
    if phases:
        print("  emulator run (delivery verified by Pull):")
        for line in [*rep.emulator_targets(udp, naive), *rep.unix_lines(phases)]:
            print(line)
    if steps:
        print("  stand-in run (the daemon's ceiling; the Pub/Sub side is a fake):")
        for line in rep.standin_targets(steps):
            print(line)
    for line in rep.plain_vs_metadata(phases, all_steps):
        print(line)
    for line in rep.json_vs_dialects(phases, "emulator run"):
        print(line)
    for line in rep.json_vs_dialects(all_steps, "stand-in run: the daemon's CPU per event"):
        print(line)
    if udp and steps:
        rep.side_by_side(udp, steps)


# ------------------------------------------------------------------ main
def figures_in_netns(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any] | None:
    """The emulator suite run again in a new network namespace, where that is
    possible: its figures, or None to run here."""
    if args.in_netns or args.netns == "no" or os.environ.get("PUBSUB_EMULATOR_HOST"):
        return None
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        print("(not root or no unshare/ip: unix runs at the host's qlen only)")
        return None
    probe = subprocess.run(
        ["unshare", "--net", "true"], check=False, capture_output=True, timeout=10
    )
    if probe.returncode:
        print("(unshare --net is not permitted here: unix runs at the host's qlen only)")
        return None
    host = [f"--in-netns={os.readlink('/proc/self/ns/net')}"]
    host += [f"--host-qlen={read_text(QLEN_PATH) or ''}"]
    sys.stdout.flush()
    command = ["unshare", "--net", "--", sys.executable, "-m", "tools.bench", "emulator"]
    return figures_from("emulator", [*command, *argv, *host])


def deprioritise(pgid: int, nice: int) -> None:
    """Lower a server's CPU priority: it stands in for Pub/Sub, whose CPU
    is not on the daemon's host in production. With autogroup scheduling
    (kernel.sched_autogroup_enabled) a process in its own session competes as
    a group, where a thread's nice value alone changes nothing: the session's
    autogroup nice is what counts, so set both."""
    os.setpriority(os.PRIO_PGRP, pgid, nice)
    with contextlib.suppress(OSError), open(f"/proc/{pgid}/autogroup", "w") as fh:
        fh.write(str(nice))


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _add_int_list(
    parser: argparse.ArgumentParser, flag: str, default: str, metavar: str, help: str
) -> None:
    """A comma-separated list of whole numbers; ``default`` in the same text
    form ('' for none), so its constant reads as the flag is written."""
    parser.add_argument(flag, type=_ints, default=_ints(default), metavar=metavar, help=help)


SUITES = ("emulator", "standin")


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Both suites: the daemon, its load, the machine."""
    parser.add_argument("--senders", type=int, default=1, help="load generator processes")
    parser.add_argument("--slot-ms", type=float, default=1.0, help="pacing slot")
    parser.add_argument(
        "--sender-engine",
        choices=("c", "python"),
        default="c",
        help="tools.testing.loadgen's engine: python costs ~4 µs/event against C's ~2.8 (a busier host)",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=KEYS,
        help="the metadata phases' distinct ordering keys (users; one of them is routed to a "
        "second topic); 0: no metadata phases",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=60.0)
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=60.0,
        help="before each phase, wait up to this long for the machine to be idle",
    )
    parser.add_argument(
        "--emulator-nice",
        type=int,
        default=19,
        help="run the emulator and the stand-in at this nice value: they stand in for a "
        "remote service whose CPU is not on the host (0: let them compete with the daemon)",
    )
    parser.add_argument(
        "--daemon-arg", action="append", default=[], help="extra `ingest serve` flag (repeat)"
    )


def _add_emulator_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=float, default=rep.TARGET_RATE, help="offered events/s, emulator run"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase, emulator run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=rep.TARGET_REPEATS,
        help="UDP phases of the emulator run, each (the loss target counts k of N)",
    )
    parser.add_argument(
        "--unix-repeat", type=int, default=1, help="unix phases of the emulator run, each"
    )
    parser.add_argument(
        "--warmup-messages",
        type=int,
        default=WARMUP_MESSAGES,
        help="raw publishes to the emulator before the first phase (0: a cold emulator, "
        "~12 µs/message until ~400k)",
    )
    parser.add_argument("--transports", default="udp,unix", help="udp,unix or one of them")
    parser.add_argument(
        "--rcvbuf",
        type=_ints,
        default=[],
        metavar="BYTES[,BYTES...]",
        help="UDP phases with each --udp-rcvbuf-bytes (default: one at the daemon's default)",
    )
    parser.add_argument(
        "--unix-qlen",
        type=_ints,
        default=[RECOMMENDED_QLEN],
        metavar="N[,N...]",
        help="unix phases at each net.unix.max_dgram_qlen besides the host's (private "
        f"network namespace only; default {RECOMMENDED_QLEN})",
    )
    parser.add_argument(
        "--metadata-repeat",
        type=int,
        default=METADATA_REPEATS,
        help="emulator run: UDP phases with metadata in this many of the --repeat repeats "
        "(each ~20 s: the metadata daemon falls behind at 150k/s, then every message is pulled)",
    )
    parser.add_argument(
        "--emulator-dialects",
        default="",
        metavar="FORMAT[,FORMAT...]",
        help="emulator run: a UDP phase per format (gelf, statsd) at --rate after the first "
        "repeat's plain phase (default none: the emulator's CPU dominates there)",
    )
    parser.add_argument("--naive-seconds", type=float, default=3.0)
    parser.add_argument("--sync-seconds", type=float, default=2.0)
    parser.add_argument("--verify-deadline-s", type=float, default=120.0)
    parser.add_argument("--netns", choices=("auto", "no"), default="auto")
    parser.add_argument("--in-netns", default="", help=argparse.SUPPRESS)
    parser.add_argument("--host-qlen", default="", help=argparse.SUPPRESS)


def _add_standin_flags(parser: argparse.ArgumentParser) -> None:
    _add_int_list(
        parser,
        "--standin-rates",
        STANDIN_RATES,
        "N[,N...]",
        "offered UDP events/s of the stand-in run's steps, until one misses the loss bound",
    )
    _add_int_list(
        parser,
        "--standin-metadata-rates",
        STANDIN_METADATA_RATES,
        "N[,N...]",
        "stand-in run: a metadata step after the plain step at each of these rates "
        "(that the stepping reaches; one below the stepping's first rate gets a plain step "
        "of its own first)",
    )
    _add_int_list(
        parser,
        "--standin-metadata-lingers-ms",
        STANDIN_METADATA_LINGERS_MS,
        "MS[,MS...]",
        "stand-in run: each metadata step again with this --batch-linger-ms ('' for none)",
    )
    _add_int_list(
        parser,
        "--dialect-rates",
        DIALECT_RATES,
        "N[,N...]",
        "stand-in run: a GELF (zlib) and a statsd step after the plain JSON step at each "
        "of these rates (that the stepping reaches; one below the stepping's first rate gets "
        "a plain step of its own first); '' for none",
    )
    parser.add_argument("--standin-seconds", type=float, default=5.0, help="per step")
    parser.add_argument(
        "--standin-engine",
        choices=("c", "python"),
        default="c",
        help="the stand-in's implementation (tools/testing/fakepubsub.py); c falls back to python",
    )


def _parser(suite: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m tools.bench {suite}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_flags(parser)
    (_add_emulator_flags if suite == "emulator" else _add_standin_flags)(parser)
    return parser


def parse_args(suite: str, argv: Sequence[str]) -> argparse.Namespace:
    """``suite``'s flags from ``argv``; the other suite's options at their
    defaults, as the code shared by both reads them."""
    everything = argparse.ArgumentParser(add_help=False)
    _add_common_flags(everything)
    _add_emulator_flags(everything)
    _add_standin_flags(everything)
    parser = _parser(suite)
    args = parser.parse_args(argv, namespace=everything.parse_args([]))
    if args.keys < 0:
        parser.error("--keys: must be >= 0")
    args.emulator_dialects = [f for f in args.emulator_dialects.split(",") if f]
    if unknown := set(args.emulator_dialects) - set(DIALECTS):
        parser.error(f"--emulator-dialects: unknown {','.join(sorted(unknown))}")
    return args


def rotated(values: list[T], by: int) -> list[T]:
    by %= len(values)
    return values[by:] + values[:by]


def plan(args: argparse.Namespace) -> list[Phase]:
    """The emulator run's phases: per repeat, UDP at each rcvbuf value, plain
    and (the first ``--metadata-repeat`` repeats) with metadata, then unix at
    each qlen, the order rotated every repeat so that neither a noisy minute
    nor the emulator's cold start always falls on the same value."""
    transports = args.transports.split(",")
    phases = []
    if "udp" in transports:
        rcvbufs: list[int | None] = list(args.rcvbuf) or [None]
        for run in range(1, args.repeat + 1):
            with_metadata = args.keys and run <= args.metadata_repeat
            variants: list[Metadata | None] = [None, metadata_of(args)] if with_metadata else [None]
            udp = [(rcvbuf, metadata) for rcvbuf in rcvbufs for metadata in variants]
            for rcvbuf, metadata in rotated(udp, run - 1):
                name = "udp" if rcvbuf is None else f"udp-{rcvbuf / (1 << 20):g}M"
                name += "-meta" if metadata else ""
                name += f".r{run}" if args.repeat > 1 else ""
                phases.append(Phase(name, "udp", args.rate, rcvbuf=rcvbuf, metadata=metadata))
                if run == 1 and rcvbuf is None and metadata is None:
                    for fmt in args.emulator_dialects:
                        phases.append(Phase(f"udp-{fmt}", "udp", args.rate, fmt=fmt))
    if "unix" in transports:
        host_qlen = int(args.host_qlen or read_text(QLEN_PATH) or 10)
        qlens = [host_qlen]
        if args.in_netns:
            qlens += [q for q in args.unix_qlen if q != host_qlen]
        for run in range(1, args.unix_repeat + 1):
            for qlen in rotated(qlens, run - 1):
                name = f"unix-q{qlen}" + (f".r{run}" if args.unix_repeat > 1 else "")
                phases.append(Phase(name, "unix", args.rate, qlen))
    return phases


def emulator_run(
    args: argparse.Namespace, workdir: str, stack: contextlib.ExitStack
) -> tuple[list[Phase], dict[str, dict[str, float]]]:
    external = os.environ.get("PUBSUB_EMULATOR_HOST")
    if external:
        admin = Emulator(port=int(external.rpartition(":")[2]))
        admin.host = external
    else:
        admin = Emulator(log_path=os.path.join(workdir, "emulator.log"))
    stack.callback(admin.stop)  # its process group if we started it; its channel
    if external:
        pgid = None
        print(f"\nusing the emulator at {external} (PUBSUB_EMULATOR_HOST)")
    else:
        started = time.monotonic()
        admin.start()
        pgid = admin.proc.pid if admin.proc else None
        if pgid and args.emulator_nice:
            deprioritise(pgid, args.emulator_nice)
        print(f"\nstarted the emulator at {admin.host} in {time.monotonic() - started:.1f} s")
    sink = EmulatorSink(admin, pgid, args.verify_deadline_s)
    bench = Bench(args, sink, workdir)
    stack.callback(bench.stop_children)
    warm_up(sink, args.warmup_messages)
    naive = {}
    for mode, seconds in (("futures", args.naive_seconds), ("sync", args.sync_seconds)):
        if seconds > 0:
            print(f"naive publisher ({mode}, {seconds:g} s) ...", flush=True)
            wait_for_quiet(args.quiet_wait_s)
            naive[mode] = run_naive(bench, mode, seconds)
    phases = []
    for index, phase in enumerate(plan(args), start=1):
        print(f"{phase.name}: {phase.rate:,.0f}/s for {args.seconds:g} s ...", flush=True)
        phases.append(run_phase(bench, phase, index, args.seconds))
        p = phases[-1]
        print(f"  loss {p.loss_pct:.3f} % ({p.delivered:,} verified)", flush=True)
    return phases, naive


def standin_run(
    args: argparse.Namespace, workdir: str, stack: contextlib.ExitStack
) -> tuple[list[Phase], str]:
    fake = FakePubSub(os.path.join(workdir, "fakepubsub.log"))
    stack.callback(fake.stop)
    fake.start(args.standin_engine)
    assert fake.proc is not None
    if args.emulator_nice:
        deprioritise(fake.proc.pid, args.emulator_nice)
    print(f"\nstarted the FAKE Pub/Sub stand-in ({fake.engine}) at {fake.host}")
    bench = Bench(args, FakeSink(fake), workdir)
    stack.callback(bench.stop_children)
    indices = itertools.count(3, 2)  # two per step: its sequence numbers, a second attempt
    steps: list[Phase] = []
    metadata_rates = args.standin_metadata_rates if args.keys else []

    def comparisons(rate: int) -> None:
        """After a plain step: the format steps (right after it, as their
        differences are the smaller), then the metadata step."""
        if rate in args.dialect_rates:
            for fmt in DIALECTS:
                name = f"standin-{rate // 1000}k-{fmt}"
                dialect = Phase(name, "udp", rate, fmt=fmt, stepping=False)
                steps.append(standin_step(bench, dialect, next(indices)))
        if rate in metadata_rates:
            meta = Phase(f"standin-{rate // 1000}k-meta", "udp", rate, metadata=metadata_of(args))
            steps.append(standin_step(bench, meta, next(indices)))
            for linger_ms in args.standin_metadata_lingers_ms:
                longer = Phase(
                    f"standin-{rate // 1000}k-meta-linger{linger_ms}",
                    "udp",
                    rate,
                    metadata=metadata_of(args),
                    linger_ms=linger_ms,
                )
                steps.append(standin_step(bench, longer, next(indices)))

    # Rates below the stepping's: a plain step outside the stepping, then the comparisons.
    below = {r for r in [*metadata_rates, *args.dialect_rates] if r < min(args.standin_rates)}
    for rate in sorted(below):
        plain = Phase(f"standin-{rate // 1000}k", "udp", rate, stepping=False)
        steps.append(standin_step(bench, plain, next(indices)))
        comparisons(rate)
    for rate in args.standin_rates:
        phase = standin_step(bench, Phase(f"standin-{rate // 1000}k", "udp", rate), next(indices))
        steps.append(phase)
        comparisons(rate)
        if not phase.meets(rate):
            break
    return steps, fake.engine


def standin_step(bench: Bench, template: Phase, index: int) -> Phase:
    """One step of the stand-in run (sequence numbers from phase ``index``,
    ``index + 1`` for a second attempt). The stepping stops at its first
    miss, so a miss of one of its steps that other work on the machine caused
    is run once more (and said so)."""
    seconds = bench.args.standin_seconds
    rate = template.rate
    what = " with metadata" if template.metadata else ""
    what += f" as {template.fmt}" if template.fmt != "json" else ""
    what += f", linger {template.linger_ms:g} ms" if template.linger_ms is not None else ""
    for attempt in (1, 2):
        print(f"stand-in {rate:,.0f}/s{what} for {seconds:g} s ...", flush=True)
        phase = Phase(
            template.name,
            "udp",
            rate,
            metadata=template.metadata,
            linger_ms=template.linger_ms,
            fmt=template.fmt,
            stepping=template.stepping,
        )
        run_phase(bench, phase, index + attempt - 1, seconds)
        print(f"  loss {phase.loss_pct:.3f} % ({phase.delivered:,} checked)", flush=True)
        if not phase.stepping or phase.metadata or phase.meets(rate):
            break
        if (phase.others_cores or 0) <= QUIET_BUSY_CORES / 2:
            break
        if attempt == 1:
            print(f"  other processes used {phase.others_cores:.2f} cores: once more")
    return phase


def run_in(
    suite: str, args: argparse.Namespace, workdir: str, stack: contextlib.ExitStack
) -> dict[str, Any]:
    if args.in_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    print("machine")
    facts = machine_facts(args)
    for label, value in facts:
        print(f"  {label:<32} {value}")
    if suite == "emulator":
        phases, naive = emulator_run(args, workdir, stack)
        report(args, phases, [], naive, "")
        return {
            "network_namespace": "own" if args.in_netns else "host",
            "host_unix_qlen": args.host_qlen or read_text(QLEN_PATH),
            "rate": args.rate,
            "seconds": args.seconds,
            "naive": naive,
            "phases": [rep.phase_figures(p) for p in phases],
        }
    steps, engine = standin_run(args, workdir, stack)
    report(args, [], steps, {}, engine)
    top = rep.ceiling([p for p in steps if p.stepping and p.plain])
    return {
        "engine": engine,
        "seconds": args.standin_seconds,
        "ceiling_events_per_s": top.rate if top else None,
        "steps": [rep.phase_figures(p) for p in steps],
    }


def run(suite: str, argv: Sequence[str]) -> dict[str, Any]:
    """One of SUITES with its flags ``argv``: its figures."""
    args = parse_args(suite, argv)
    if suite == "emulator" and (figures := figures_in_netns(args, argv)) is not None:
        return figures
    workdir = tempfile.mkdtemp(prefix="ingest-bench-")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        try:
            return run_in(suite, args, workdir, stack)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            raise
        except Exception:
            for log in sorted(os.listdir(workdir)):
                if log.endswith(".log"):
                    with open(os.path.join(workdir, log)) as fh:
                        tail = fh.readlines()[-8:]
                    print(f"--- {log} (last lines)\n{''.join(tail)}", file=sys.stderr)
            raise
