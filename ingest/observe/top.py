"""``ingest top``: the live full-terminal dashboard attached to a daemon's /metrics.

It needs nothing but HTTP, so it works with a daemon under systemd. A poller
thread scrapes /metrics and /healthz twice a second with 1 s timeouts, so a
hung or vanished daemon never delays the screen or the keyboard; the main
thread redraws at 2 Hz (one full-screen frame per refresh: no flicker) and
reads keys. When scrapes fail the last numbers stay on screen, dimmed, under a
DISCONNECTED line, and the poller keeps trying: a daemon that comes back
reconnects by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live

from ingest.observe.daemon_url import base_url, why
from ingest.observe.dashboard import REFRESH_INTERVAL_S, History, Snapshot, render

FETCH_TIMEOUT_S = 1.0
QUIT_KEYS = ("q", "Q")


@dataclass(frozen=True)
class Scrape:
    snapshot: Snapshot | None  # None: the scrape failed, see error
    health_reasons: list[str] | None  # None: /healthz unknown
    error: str | None
    at: float  # monotonic


def _health(base: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=FETCH_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 carries the reasons in its body
        body = exc.read()
    except OSError:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("status") == "ok":
        return []
    return [str(reason) for reason in doc.get("reasons") or ()] or ["unhealthy"]


def scrape(base: str) -> Scrape:
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=FETCH_TIMEOUT_S) as response:
            text = response.read().decode()
        # The parser is lazy: consume it here so a malformed body fails here.
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError) as exc:  # URLError, refused, timeout; not exposition text
        return Scrape(None, None, why(exc), time.monotonic())
    snapshot = Snapshot.from_families(families, time.monotonic())
    return Scrape(snapshot, _health(base), None, snapshot.at)


def _poll(base: str, results: queue.Queue[Scrape], stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        results.put(scrape(base))
        stop.wait(max(0.0, REFRESH_INTERVAL_S - (time.monotonic() - started)))


class _Keys:
    """Single key presses from a terminal stdin (cbreak: no Enter needed, and
    Ctrl-C still raises KeyboardInterrupt); without a terminal, only a clock."""

    def __init__(self) -> None:
        self._fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None

    @contextlib.contextmanager
    def cbreak(self) -> Iterator[_Keys]:
        if self._fd is None:
            yield self
            return
        saved = termios.tcgetattr(self._fd)
        try:
            tty.setcbreak(self._fd)
            yield self
        finally:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)

    def wait(self, timeout_s: float) -> str:
        """Keys typed within timeout_s ("" when none)."""
        if self._fd is None:
            time.sleep(timeout_s)
            return ""
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        return os.read(self._fd, 64).decode(errors="replace") if ready else ""


def _stale(error: str, last_ok: float | None, base: str) -> str:
    age = "" if last_ok is None else f", last data {time.monotonic() - last_ok:.0f} s ago"
    return f"{error}{age}; retrying {base}"


def run_top(url: str) -> int:
    base = base_url(url)
    console = Console()
    history = History()
    results: queue.Queue[Scrape] = queue.Queue()
    stop = threading.Event()
    poller = threading.Thread(
        target=_poll, args=(base, results, stop), name="ingest-top-poll", daemon=True
    )
    health: list[str] | None = None
    error: str | None = "connecting"
    last_ok: float | None = None
    poller.start()
    try:
        with (
            _Keys().cbreak() as keys,
            Live(console=console, screen=True, auto_refresh=False) as live,
        ):
            while True:
                with contextlib.suppress(queue.Empty):
                    while True:
                        result = results.get_nowait()
                        error = result.error
                        if result.snapshot is not None:
                            history.add(result.snapshot)
                            health, last_ok = result.health_reasons, result.at
                disconnected = None if error is None else _stale(error, last_ok, base)
                view = render(
                    history,
                    health,
                    width=console.width,
                    height=console.height,
                    ascii_only=console.options.ascii_only,
                    disconnected=disconnected,
                )
                live.update(view, refresh=True)
                if any(key in QUIT_KEYS for key in keys.wait(REFRESH_INTERVAL_S)):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
