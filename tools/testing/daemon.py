"""``ingest serve`` as a real subprocess, for tests and the bench alike.

``DaemonProcess`` starts the daemon with PUBSUB_EMULATOR_HOST set (and no
INGEST_* variable of the caller's), captures its stderr to a file, and waits
(polling, bounded) for the documented ``ready:`` line; with a metrics URL it
also scrapes /metrics and waits for a drain. ``Daemons`` owns every process a
test started and kills whatever is still running at teardown, so no
subprocess outlives its test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

# The console script installed next to the interpreter (.venv/bin/ingest).
INGEST = str(Path(sys.executable).with_name("ingest"))
READY_TIMEOUT_S = 30.0
POLL_S = 0.02
DRAIN_POLL_S = 0.2  # between /metrics scrapes: a scrape costs the daemon ~1 ms

STOPPED_RE = re.compile(
    r"stopped: received=(?P<received>\d+) published=(?P<published>\d+) "
    r"rejected=(?P<rejected>\d+) dropped=(?P<dropped>\d+) \(shutdown=(?P<shutdown>\d+)\) "
    r"spooled=(?P<spooled>\d+) unconfirmed=(?P<unconfirmed>\d+)"
)


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
    """One ``ingest serve`` subprocess; stderr goes to ``log_path``."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: str | Path,
        *,
        emulator_host: str | None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
        metrics_url: str | None = None,
    ) -> None:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("INGEST_") and k != "PUBSUB_EMULATOR_HOST"
        }
        if emulator_host is not None:
            full_env["PUBSUB_EMULATOR_HOST"] = emulator_host
        full_env.update(env or {})
        self.args = [*wrapper, INGEST, "serve", *args]
        self.log_path = Path(log_path)
        self.metrics_url = metrics_url
        with open(log_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=full_env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def lines(self) -> list[str]:
        return self.log.splitlines()

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, pattern: str, timeout_s: float = 10.0) -> re.Match[str]:
        """Wait for a regex in the log; fails early if the process exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.log)
            if match:
                return match
            if not self.running():
                # One more look: the line may have been written just before exit.
                match = regex.search(self.log)
                if match:
                    return match
                raise AssertionError(
                    f"ingest exited with {self.proc.returncode} before logging "
                    f"{pattern!r}; log:\n{self.log}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} after {timeout_s}s; log:\n{self.log}")
            time.sleep(POLL_S)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Wait for the documented ``ready: ...`` line; returns it."""
        return self.wait_for_log(r"ready: [^\n]*", timeout_s).group(0)

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 20.0) -> int:
        """Exit code; AssertionError (after killing it) if it does not exit in time."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"ingest did not exit within {timeout_s}s; log:\n{self.log}"
            ) from None

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.terminate()
        return self.wait(timeout_s)

    def shut_down(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for its drain; SIGKILL after ``timeout_s``, as a
        benchmark must go on: the exit code either way."""
        if self.running():
            self.terminate()
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stopped_counts(self) -> dict[str, int]:
        """The numbers of the final ``stopped: ...`` line."""
        match = STOPPED_RE.search(self.log)
        assert match, f"no stopped: line in log:\n{self.log}"
        return {key: int(value) for key, value in match.groupdict().items()}

    def stopped_line(self) -> str | None:
        """The daemon's own account: its final ``stopped: received=...`` line."""
        return next((line for line in reversed(self.lines) if STOPPED_RE.search(line)), None)

    def warnings(self) -> list[str]:
        return [line for line in self.lines if " WARNING " in line or " ERROR " in line]

    def scrape(self) -> Metrics:
        if self.metrics_url is None:
            raise ValueError("started without a metrics_url")
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
            time.sleep(DRAIN_POLL_S)


class Daemons:
    """Starts daemons for one test and kills any left running at teardown."""

    def __init__(self, tmp_path: Path, emulator_host: str | None) -> None:
        self.tmp_path = tmp_path
        self.emulator_host = emulator_host
        self.started: list[DaemonProcess] = []

    def start(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        emulator_host: str | None = "",
        wrapper: Sequence[str] = (),
    ) -> DaemonProcess:
        """Start ``ingest serve ARGS`` (not waiting for ready). The emulator
        is the session's unless ``emulator_host`` is given (None: unset);
        ``wrapper`` is a command prefix (e.g. setpriv)."""
        host = self.emulator_host if emulator_host == "" else emulator_host
        log_path = self.tmp_path / f"ingest-{len(self.started)}.log"
        daemon = DaemonProcess(args, log_path, emulator_host=host, env=env, wrapper=wrapper)
        self.started.append(daemon)
        return daemon

    def run_failing(
        self, *args: str, wrapper: Sequence[str] = (), timeout_s: float = 20.0
    ) -> tuple[int, str]:
        """Run a daemon expected to fail at startup; (exit code, stderr)."""
        daemon = self.start(*args, wrapper=wrapper)
        code = daemon.wait(timeout_s)
        return code, daemon.log

    def close(self) -> None:
        for daemon in self.started:
            daemon.kill()
