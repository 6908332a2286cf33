"""The bench's suites, what one run of them records, and the JSON it writes.

A suite is a module ``tools.bench.NAME`` with ``run(argv) -> dict``: it
parses its own flags from ``argv``, prints its report as it goes, and returns
its figures (JSON-able: numbers, strings, lists, dicts). A figure ``"ok":
False`` marks a run whose own check failed (e.g. delivery not verified); the
bench then exits non-zero, the figures still written. A new suite is a module
and a line in SUITES (e.g. one measuring the daemon's CPU across offered
rates beside google-cloud-pubsub's own publisher: its figures a list of
{rate, cpu} rows per publisher, machine facts already in the file).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from tools.testing.procfs import read_text

FORMAT = 1  # of the JSON file; bumped when a figure changes meaning

# name -> one line on what it measures; `all` runs them in this order.
SUITES: dict[str, str] = {
    "emulator": "the daemon against the real emulator: verified delivery, loss, CPU per event, "
    "the naive publisher (flags of tools/bench/harness.py)",
    "standin": "the daemon against a fake Publish server: its ceiling, metadata and input "
    "formats (flags of tools/bench/harness.py)",
    "scrape": "what a /metrics scrape costs the daemon",
    "client": "the Emitter's cost per event",
    "gunicorn": "a gunicorn app's request latency with and without ingest",
    "spool": "the disk spool's append and replay throughput, and its open cost",
    "compression": "gzip on Publish: bytes on the link against CPU per event",
    "credentials": "what reading unix senders' credentials costs the read loop",
    "read": "the read loop alone: µs per datagram by input format and allow-list",
    "lanes": "the metadata pipeline's own work per event, stage by stage",
    "publish_call": "what one Publish call costs: grpc.aio, grpcio futures, raw HTTP/2",
    "rates": "the daemon's cores, µs/event, requests/s and latency from 1k events/s up, plain and "
    "keyed, beside google-cloud-pubsub's publisher, on the emulator and a 25 ms stand-in",
}


class Suite(Protocol):
    def run(self, argv: Sequence[str]) -> dict[str, Any]: ...


def load(name: str) -> Suite:
    return cast(Suite, importlib.import_module(f"tools.bench.{name}"))


@dataclass(frozen=True)
class Outcome:
    """One suite's run: its flags, how long it took, its figures or its error."""

    name: str
    argv: tuple[str, ...]
    seconds: float
    figures: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.figures or {}).get("ok") is not False

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "argv": list(self.argv),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "figures": self.figures,
        }
        if self.error is not None:
            record["error"] = self.error
        return record


def run_suite(name: str, argv: Sequence[str]) -> Outcome:
    started = time.monotonic()
    try:
        figures = load(name).run(list(argv))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one suite's failure must not lose the others' figures
        print(f"suite {name} failed: {exc!r}", file=sys.stderr)
        return Outcome(name, tuple(argv), time.monotonic() - started, None, repr(exc))
    return Outcome(name, tuple(argv), time.monotonic() - started, figures)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """What a later run must match for its figures to compare with these."""
    model = re.search(r"model name\s*:\s*(.*)", read_text("/proc/cpuinfo") or "")
    load = (read_text("/proc/loadavg") or "").split()[:3]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1) if model else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [float(x) for x in load] or None,
        "net.core.rmem_max": read_text("/proc/sys/net/core/rmem_max"),
        "net.core.rmem_default": read_text("/proc/sys/net/core/rmem_default"),
        "net.unix.max_dgram_qlen": read_text("/proc/sys/net/unix/max_dgram_qlen"),
        "git_commit": _git_commit(),
    }


def document(outcomes: Sequence[Outcome], argv: Sequence[str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "machine": machine_facts(),
        "suites": {o.name: o.to_json() for o in outcomes},
    }


def write_json(path: str, doc: Mapping[str, Any]) -> None:
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(partial, path)


def figures_from(name: str, command: Sequence[str], **popen: Any) -> dict[str, Any]:
    """Run ``command`` (``python -m tools.bench NAME ...``, e.g. inside a
    network namespace), its output passed through, and return its figures
    for suite ``name``."""
    with tempfile.TemporaryDirectory(prefix="ingest-bench-json-") as tmp:
        path = os.path.join(tmp, "figures.json")
        done = subprocess.run([*command, "--json", path], check=False, **popen)
        try:
            with open(path) as fh:
                record = json.load(fh)["suites"][name]
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"{name} exited with {done.returncode}, no figures: {exc}") from exc
    if record.get("error"):
        raise RuntimeError(f"{name}: {record['error']}")
    figures: dict[str, Any] = record["figures"]
    return figures
