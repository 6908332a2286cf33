"""A running `ingest serve` for `make bench`: start, readiness, /metrics, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

INGEST = os.path.join(os.path.dirname(sys.executable), "ingest")
STOPPED_RE = re.compile(r"stopped: received=(\d+) published=(\d+) rejected=(\d+) dropped=(\d+)")


class Metrics(dict[str, dict[str, float]]):
    """One /metrics scrape: {name: {labels: value}}."""

    @classmethod
    def parse(cls, text: str) -> Metrics:
        out = cls()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                name, _, labels = series.partition("{")
                out.setdefault(name, {})[labels.rstrip("}")] = float(value)
        return out

    def total(self, name: str) -> int:
        return int(sum(self.get(name, {}).values()))

    def nonzero(self, name: str) -> dict[str, int]:
        return {labels: int(value) for labels, value in self.get(name, {}).items() if value}


class DaemonProcess:
    """One ``ingest serve``; its stderr is kept in ``lines`` and in ``log_path``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: str, metrics_url: str):
        self.metrics_url = metrics_url
        self.log_path = log_path
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [INGEST, "serve", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="daemon-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                log.write(line)
                if " ready: " in line:
                    self._ready.set()
        self._ready.set()  # it exited: nobody should wait any longer

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            tail = "\n  ".join(self.lines[-10:])
            raise RuntimeError(f"ingest serve did not become ready:\n  {tail}")

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return Metrics.parse(response.read().decode())

    def wait_drained(self, timeout_s: float) -> tuple[bool, Metrics]:
        """Until nothing is queued or in flight and intake has stopped growing;
        (False, last scrape) at the deadline."""
        deadline = time.monotonic() + timeout_s
        previous = -1
        while True:
            metrics = self.scrape()
            received = metrics.total("ingest_events_received_total")
            busy = metrics.total("ingest_queue_events") + metrics.total("ingest_inflight_events")
            if not busy and received == previous:
                return True, metrics
            if time.monotonic() > deadline:
                return False, metrics
            previous = received
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait for its drain; SIGKILL after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode

    def stopped_line(self) -> str | None:
        """The daemon's own account: its final ``stopped: received=...`` line."""
        return next((line for line in reversed(self.lines) if STOPPED_RE.search(line)), None)

    def warnings(self) -> list[str]:
        return [line for line in self.lines if " WARNING " in line or " ERROR " in line]
