"""`make bench`: ingest against the real Pub/Sub emulator, and the naive publisher.

One run, in order:

1. machine facts; start the emulator (unless PUBSUB_EMULATOR_HOST is set) and
   warm its JIT up with raw publishes;
2. the naive alternative: google-cloud-pubsub ``publish()`` per event
   (tools.naive: futures with default batching, then ``.result()`` per event);
3. per transport, a fresh ``ingest serve --udp ... --unix ...`` fed at a fixed
   offered rate by tools.loadgen, drained (read from its /metrics), stopped
   with SIGTERM, and verified by pulling its subscription to the end
   (tools.verify: every sequence number, byte for byte);
4. one table, and PASS/MISS per target.

Unix datagram senders get EAGAIN once 11 datagrams wait (net.unix.max_dgram_qlen,
10 by default, per network namespace). Run as root where unshare(1) works, the
bench re-executes itself in a new network namespace (emulator included, on the
namespace's own loopback) and runs the unix transport twice: at the host's value
and at 512, without touching the host's sysctls. ``--netns no`` stays put.

Everything it starts is stopped and its temp directory removed on the way out,
Ctrl-C and SIGTERM included; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ingest.pubsub import RequestEncoder
from tools.daemonproc import STOPPED_RE, DaemonProcess, Metrics
from tools.emulator import Emulator, free_port
from tools.procfs import group_cpu_s, machine_cpu_s, peak_rss_kib, process_cpu_s, read_text
from tools.verify import Verification, verify

TARGET_RATE = 150_000  # events/s offered over UDP ...
TARGET_LOSS_PCT = 0.1  # ... delivered with at most this loss
TARGET_CPU_US = 6.0  # daemon CPU per event
TARGET_RATIO = 15.0  # ingest's events/s over the naive publisher's
RECOMMENDED_QLEN = 512  # net.unix.max_dgram_qlen of the loss-free unix run
PROJECT = "ingest-bench"
WARMUP_MESSAGES = 600_000  # its publish path costs 12 µs/msg cold, ~5 µs after ~400k
QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"
SEQ_STRIDE = 100_000_000  # phase i sends sequence numbers from i * SEQ_STRIDE
QUIET_BUSY_CORES = 0.3  # the machine counts as quiet below this (2 cores shared)


# ---------------------------------------------------------------- phases
@dataclass
class Senders:
    """The load generators' reports (tools.loadgen), summed."""

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

    @property
    def failures(self) -> int:
        return self.eagain + sum(self.errors.values())


@dataclass
class Phase:
    name: str
    transport: str  # "udp" or "unix"
    qlen: int | None = None  # net.unix.max_dgram_qlen the daemon's sockets were made under
    senders: Senders = field(default_factory=Senders)
    drained: bool = False
    window_s: float = 0.0  # senders start -> drained
    daemon_cpu_s: float = 0.0
    emulator_cpu_s: float | None = None
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

    @property
    def delivered_rate(self) -> float:
        """Delivered events over first send -> last publish (the emulator's stamp)."""
        v = self.verification
        if not v or not v.last_publish_us:
            return 0.0
        span = v.last_publish_us / 1e6 - self.senders.start_wall
        return self.delivered / span if span > 0 else 0.0

    @property
    def cpu_us_per_event(self) -> float | None:
        return self.daemon_cpu_s / self.received * 1e6 if self.received else None

    @property
    def others_cores(self) -> float | None:
        """CPU that neither the daemon, the senders, the emulator nor interrupts
        used during the phase: other processes on the machine (contamination)."""
        if not self.window_s or self.emulator_cpu_s is None:
            return None
        ours = self.daemon_cpu_s + self.senders.cpu_s + self.emulator_cpu_s + self.interrupts_s
        return max(0.0, self.machine_busy_s - ours) / self.window_s


@dataclass
class Bench:
    """What every phase needs: options, the emulator, a scratch directory."""

    args: argparse.Namespace
    admin: Emulator
    emulator_pgid: int | None  # None: an external emulator (PUBSUB_EMULATOR_HOST)
    workdir: str
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def in_netns(self) -> bool:
        return bool(self.args.in_netns)

    def env(self) -> dict[str, str]:
        return dict(os.environ, PUBSUB_EMULATOR_HOST=self.admin.host)

    def emulator_cpu_s(self) -> float | None:
        return group_cpu_s(self.emulator_pgid) if self.emulator_pgid else None

    def spawn(self, command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **kwargs)
        self.children.append(proc)
        return proc

    def stop_children(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

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


def set_unix_qlen(bench: Bench, qlen: int) -> None:
    """Only ever in the bench's own network namespace, never the host's."""
    if not bench.in_netns or os.readlink("/proc/self/ns/net") == bench.args.in_netns:
        raise RuntimeError("refusing to change net.unix.max_dgram_qlen outside our namespace")
    with open(QLEN_PATH, "w") as fh:
        fh.write(str(qlen))


def run_senders(
    bench: Bench, phase: Phase, target: list[str], first_seq: int, start_at: float
) -> None:
    args = bench.args
    command = [sys.executable, "-m", "tools.loadgen", *target]
    command += ["--rate", str(args.rate / args.senders), "--seconds", str(args.seconds)]
    command += ["--slot-ms", str(args.slot_ms), "--first-seq", str(first_seq)]
    command += ["--count", str(args.senders), "--start-at", repr(start_at)]
    procs = [bench.spawn([*command, "--index", str(i)]) for i in range(args.senders)]
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds * 3 + 30)
        if proc.returncode:
            raise RuntimeError(f"tools.loadgen exited with {proc.returncode}")
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


def run_phase(bench: Bench, phase: Phase, index: int) -> Phase:
    """A fresh daemon, a fixed offered rate, drain, SIGTERM, pull everything."""
    args = bench.args
    first_seq = index * SEQ_STRIDE
    unix_path = os.path.join(bench.workdir, f"{phase.name}.sock")
    udp_port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    metrics_port = free_port()
    queue_events = max(1_000_000, int(args.rate * args.seconds * 2))  # never the bottleneck
    if phase.qlen is not None and bench.in_netns:
        set_unix_qlen(bench, phase.qlen)  # the daemon's unix socket inherits it
    phase.qlen = int(read_text(QLEN_PATH) or 0) or None
    with bench.topic(f"bench-{phase.name}") as (topic, subscription):
        daemon = DaemonProcess(
            [
                f"--project={PROJECT}",
                f"--topic={topic.rpartition('/')[2]}",
                f"--udp=127.0.0.1:{udp_port}",
                f"--unix={unix_path}",
                f"--metrics=127.0.0.1:{metrics_port}",
                f"--queue-max-events={queue_events}",
                f"--queue-max-bytes={queue_events * 256}",
                *args.daemon_arg,
            ],
            bench.env(),
            os.path.join(bench.workdir, f"{phase.name}.log"),
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        try:
            daemon.wait_ready(60)
            phase.busy_before_cores = wait_for_quiet(args.quiet_wait_s)
            target = ["--udp", f"127.0.0.1:{udp_port}"]
            if phase.transport == "unix":
                target = ["--unix", unix_path]
            cpu0, emu0, (busy0, irq0) = (
                process_cpu_s(daemon.pid),
                bench.emulator_cpu_s(),
                machine_cpu_s(),
            )
            start_at = time.monotonic() + 1.0  # once every sender has imported
            run_senders(bench, phase, target, first_seq, start_at)
            phase.drained, phase.metrics = daemon.wait_drained(args.drain_timeout_s)
            phase.window_s = time.monotonic() - start_at
            phase.daemon_cpu_s = process_cpu_s(daemon.pid) - cpu0
            emu1 = bench.emulator_cpu_s()
            if emu0 is not None and emu1 is not None:
                phase.emulator_cpu_s = emu1 - emu0
            busy1, irq1 = machine_cpu_s()
            phase.machine_busy_s, phase.interrupts_s = busy1 - busy0, irq1 - irq0
            phase.peak_rss_kib = peak_rss_kib(daemon.pid)
        finally:
            phase.exit_code = daemon.stop()
            phase.stopped_line = daemon.stopped_line()
            phase.warnings = daemon.warnings()
        per_sender = int(args.rate / args.senders * args.seconds)
        phase.verification = verify(
            bench.admin.channel,
            subscription,
            first_seq,
            per_sender * args.senders,
            args.verify_deadline_s,
        )
    return phase


def run_naive(bench: Bench, mode: str, seconds: float) -> dict[str, float]:
    with bench.topic(f"bench-naive-{mode}") as (topic, _):
        command = [sys.executable, "-m", "tools.naive", topic, "--mode", mode]
        proc = bench.spawn([*command, "--seconds", str(seconds)], env=bench.env())
        out, _ = proc.communicate(timeout=seconds * 10 + 60)
        if proc.returncode:
            raise RuntimeError(f"tools.naive --mode {mode} exited with {proc.returncode}")
        result: dict[str, float] = json.loads(out)
        return result


def warm_up(bench: Bench) -> None:
    """Raw batched publishes first, so that no phase pays for the emulator's JIT."""
    with bench.topic("bench-warmup") as (topic, _):
        publish = bench.admin.channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
        encoder = RequestEncoder(topic)
        request = encoder.encode([b'{"warm":"up","pad":"%0100d"}' % i for i in range(1000)])
        for _ in range(WARMUP_MESSAGES // 1000):
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
    ok_requests = m.get("ingest_publish_requests_total", {}).get('code="OK"')
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
        "events per Publish request": _n(
            m.total("ingest_events_published_total") / ok_requests if ok_requests else None
        ),
        "daemon dropped": str(m.nonzero("ingest_events_dropped_total") or 0),
        "delivered (Pull, distinct seq)": (_n(p.delivered) + ("" if p.verified else " PARTIAL")),
        "  duplicates / foreign": f"{v.duplicates} / {v.foreign}" if v else "-",
        "  verification pull (s)": _n(v.elapsed_s, 1) if v else "-",
        "loss % of offered": _n(p.loss_pct, 3),
        "loss % of sent ok": _n(100 * (s.ok - p.delivered) / s.ok if s.ok else None, 3),
        "delivered events/s": _n(p.delivered_rate),
        "latency ms p50/p99/max": f"{_n(p50)} / {_n(p99)} / {_n(top)}",
        "daemon CPU µs/event": per_event(p.daemon_cpu_s, p.received),
        "daemon CPU (cores)": cores(p.daemon_cpu_s),
        "daemon peak RSS (MiB)": _n(p.peak_rss_kib / 1024 if p.peak_rss_kib else None),
        "sender CPU µs/event": per_event(s.cpu_s, s.attempted),
        "emulator CPU µs/event": per_event(p.emulator_cpu_s, p.delivered),
        "machine busy (cores)": cores(p.machine_busy_s),
        "  of which irq+softirq": cores(p.interrupts_s),
        "  of which other processes": _n(p.others_cores, 2),
        "  busy before the phase": _n(p.busy_before_cores, 2),
        "drained before deadline": "yes" if p.drained else "NO",
        "daemon exit code": _n(p.exit_code),
    }


def print_table(title: str, headers: list[str], columns: list[dict[str, str]]) -> None:
    print(f"\n{title}")
    width = max(22, *(len(h) + 2 for h in headers))
    print(f"  {'':<32}" + "".join(f"{h:>{width}}" for h in headers))
    for label in columns[0]:
        print(f"  {label:<32}" + "".join(f"{c[label]:>{width}}" for c in columns))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(bench: Bench, phases: list[Phase], naive: dict[str, dict[str, float]]) -> None:
    args = bench.args
    print_table(
        f"ingest, fixed offered rate {args.rate:,.0f}/s for {args.seconds:g} s per transport "
        f"({args.senders} sender process(es), {args.slot_ms:g} ms slots; emulator at nice "
        f"{args.emulator_nice}); delivery verified by pulling EVERY message (full, not a sample)",
        [p.name for p in phases],
        [phase_cells(p) for p in phases],
    )
    print("\nthe daemon's own view (its last line after SIGTERM):")
    for p in phases:
        print(f"  {p.name:<12} {(p.stopped_line or 'no stopped line').split('stopped: ')[-1]}")
    for p in phases:
        if (p.others_cores or 0) > QUIET_BUSY_CORES / 2:
            print(
                f"  NOTE {p.name}: other processes used {p.others_cores:.2f} cores during the "
                "phase; its rates and latencies are understated"
            )
    notes = sorted({w.split(": ", 1)[-1] for p in phases for w in p.warnings})
    for note in notes[:6]:
        print(f"  daemon warning: {note}")

    futures, sync = naive.get("futures"), naive.get("sync")
    print("\nnaive alternative: google-cloud-pubsub PublisherClient.publish() per event")
    for label, r in (("futures, default batching", futures), ("sync, .result() per event", sync)):
        if r:
            latency = f", {r['latency_ms']:.2f} ms/event" if r.get("latency_ms") else ""
            print(
                f"  {label:<28} {r['events']:>8,.0f} events in {r['elapsed_s']:.1f} s: "
                f"{r['events_per_s']:>8,.0f} events/s, {r['cpu_us_per_event']:.0f} µs CPU/event"
                f"{latency}"
            )

    udp = next((p for p in phases if p.transport == "udp"), None)
    print("\ntargets")
    if udp is None:
        print("  (no UDP phase was run)")
        return
    rate_ok = udp.offered_rate >= 0.99 * TARGET_RATE
    loss_ok = rate_ok and udp.verified and udp.loss_pct <= TARGET_LOSS_PCT
    print(
        f"  {verdict(loss_ok)}  UDP {TARGET_RATE:,}/s offered, loss <= {TARGET_LOSS_PCT} %: "
        f"offered {udp.offered_rate:,.0f}/s, loss {udp.loss_pct:.3f} %"
        + ("" if udp.verified else " (verification incomplete)")
    )
    cpu = udp.cpu_us_per_event
    print(
        f"  {verdict(cpu is not None and cpu <= TARGET_CPU_US)}  daemon CPU <= "
        f"{TARGET_CPU_US:g} µs/event (UDP): {_n(cpu, 2)} µs/event"
    )
    for p in phases:
        if p.transport == "unix":
            print(f"        (unix, qlen {p.qlen}: {_n(p.cpu_us_per_event, 2)} µs/event)")
    if futures:
        ratio = udp.delivered_rate / futures["events_per_s"]
        print(
            f"  {verdict(ratio >= TARGET_RATIO)}  >= {TARGET_RATIO:g}x the naive publisher's "
            f"events/s: {udp.delivered_rate:,.0f} / {futures['events_per_s']:,.0f} = "
            f"{ratio:.1f}x (ingest was held to the offered rate; naive ran flat out)"
        )
        if sync:
            print(
                f"        (vs sync .result() per event: {udp.delivered_rate / sync['events_per_s']:,.0f}x)"
            )


# ------------------------------------------------------------------ main
def reexec_in_netns(args: argparse.Namespace, argv: list[str]) -> None:
    """Re-run this bench in a new network namespace where that is possible."""
    if args.in_netns or args.netns == "no" or os.environ.get("PUBSUB_EMULATOR_HOST"):
        return
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        print("(not root or no unshare/ip: unix runs at the host's qlen only)")
        return
    probe = subprocess.run(
        ["unshare", "--net", "true"], check=False, capture_output=True, timeout=10
    )
    if probe.returncode:
        print("(unshare --net is not permitted here: unix runs at the host's qlen only)")
        return
    host = [f"--in-netns={os.readlink('/proc/self/ns/net')}"]
    host += [f"--host-qlen={read_text(QLEN_PATH) or ''}"]
    sys.stdout.flush()
    os.execvp(
        "unshare", ["unshare", "--net", "--", sys.executable, "-m", "tools.bench", *argv, *host]
    )


def deprioritise(pgid: int, nice: int) -> None:
    """Lower the emulator's CPU priority: it stands in for Pub/Sub, whose CPU
    is not on the daemon's host in production. With autogroup scheduling
    (kernel.sched_autogroup_enabled) a process in its own session competes as
    a group, where a thread's nice value alone changes nothing: the session's
    autogroup nice is what counts, so set both."""
    os.setpriority(os.PRIO_PGRP, pgid, nice)
    with contextlib.suppress(OSError), open(f"/proc/{pgid}/autogroup", "w") as fh:
        fh.write(str(nice))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="per transport")
    parser.add_argument("--senders", type=int, default=1, help="load generator processes")
    parser.add_argument("--slot-ms", type=float, default=1.0, help="pacing slot")
    parser.add_argument("--transports", default="udp,unix", help="udp,unix or one of them")
    parser.add_argument("--naive-seconds", type=float, default=3.0)
    parser.add_argument("--sync-seconds", type=float, default=2.0)
    parser.add_argument("--drain-timeout-s", type=float, default=60.0)
    parser.add_argument("--verify-deadline-s", type=float, default=120.0)
    parser.add_argument("--netns", choices=("auto", "no"), default="auto")
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
        help="run the emulator at this nice value: it stands in for a remote service "
        "whose CPU is not on the host (0: let it compete with the daemon)",
    )
    parser.add_argument(
        "--daemon-arg", action="append", default=[], help="extra `ingest serve` flag (repeat)"
    )
    parser.add_argument("--in-netns", default="", help=argparse.SUPPRESS)
    parser.add_argument("--host-qlen", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(bench: Bench) -> list[Phase]:
    transports = bench.args.transports.split(",")
    host_qlen = int(bench.args.host_qlen or read_text(QLEN_PATH) or 10)
    phases = [Phase("udp", "udp")] if "udp" in transports else []
    if "unix" in transports:
        phases.append(Phase(f"unix-q{host_qlen}", "unix", host_qlen))
        if bench.in_netns and host_qlen != RECOMMENDED_QLEN:
            phases.append(Phase(f"unix-q{RECOMMENDED_QLEN}", "unix", RECOMMENDED_QLEN))
    return phases


def run(args: argparse.Namespace, workdir: str, stack: contextlib.ExitStack) -> None:
    external = os.environ.get("PUBSUB_EMULATOR_HOST")
    if args.in_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    print("machine")
    for label, value in machine_facts(args):
        print(f"  {label:<32} {value}")
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
    bench = Bench(args, admin, pgid, workdir)
    stack.callback(bench.stop_children)
    warm_up(bench)
    naive = {}
    for mode, seconds in (("futures", args.naive_seconds), ("sync", args.sync_seconds)):
        if seconds > 0:
            print(f"naive publisher ({mode}, {seconds:g} s) ...", flush=True)
            wait_for_quiet(args.quiet_wait_s)
            naive[mode] = run_naive(bench, mode, seconds)
    phases = []
    for index, phase in enumerate(plan(bench), start=1):
        print(f"{phase.name}: {args.rate:,.0f}/s for {args.seconds:g} s ...", flush=True)
        phases.append(run_phase(bench, phase, index))
        v = phases[-1].verification
        if v:
            print(f"  verified {v.distinct:,} distinct in {v.elapsed_s:.1f} s", flush=True)
    report(bench, phases, naive)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    reexec_in_netns(args, argv)
    # SIGTERM unwinds like Ctrl-C, so the cleanup below always runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="ingest-bench-")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        try:
            run(args, workdir, stack)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        except Exception as exc:
            for log in sorted(os.listdir(workdir)):
                if log.endswith(".log"):
                    with open(os.path.join(workdir, log)) as fh:
                        tail = fh.readlines()[-8:]
                    print(f"--- {log} (last lines)\n{''.join(tail)}", file=sys.stderr)
            print(f"bench failed: {exc!r}", file=sys.stderr)
            return 1
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
