"""``ingest top`` as a person sees it: a real daemon on the real emulator, the
dashboard in a detached tmux pane of fixed size, the screen read back with
``tmux capture-pane``. tmux runs on a private server socket (-L), so the test
neither sees nor disturbs anyone else's sessions."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, PubSubNames
from tools.testing.emulator import Emulator, free_port

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

ROOT = REPO
VALID = 1_234
STATSD = 3
PACE_PER_S = 200  # ~6 s of load: long enough to watch the rate while it runs


@dataclass
class Serve:
    """``ingest serve`` on fixed ports, restartable on the same ones."""

    emulator: Emulator
    names: PubSubNames
    udp_port: int
    metrics_port: int
    unix_path: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "ingest", "serve",
            "--project", self.names.project, "--topic", self.names.topic_id,
            "--udp", f"127.0.0.1:{self.udp_port}", "--unix", self.unix_path,
            "--metrics", f"127.0.0.1:{self.metrics_port}",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "PUBSUB_EMULATOR_HOST": self.emulator.host},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        poll(self._answers, "the daemon's /healthz to answer", 30, self._log)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"ingest serve exited with {self.proc.returncode}:\n{self._log()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)
        except urllib.error.HTTPError:
            return True  # 503 is an answer
        except OSError:
            return False
        return True

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def _log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-3000:]


@dataclass
class Tmux:
    server: str  # private socket name
    session: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # The pane's size is the one given; COLUMNS/LINES describe the test
        # runner's terminal (something in the session exports them) and would
        # override it for rich.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run(
            ["tmux", "-L", self.server, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def start(self, command: str, width: int, height: int, rc_file: Path, after: str = "") -> None:
        """Run ``command`` in a detached pane of fixed size; its exit status
        goes to ``rc_file``; ``after`` runs next (e.g. a sleep that keeps the
        pane's last screen readable)."""
        shell = f"{command}; echo $? > {shlex.quote(str(rc_file))}" + (
            f"; {after}" if after else ""
        )
        started = self.run(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
            "-c", str(ROOT), shell,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session).returncode == 0


def poll(
    condition: Callable[[], bool], what: str, timeout_s: float, show: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout_s:.0f} s; last seen:\n{show()}")


def row(screen: str, *cells: str) -> bool:
    pattern = r"(^|\s)" + r"\s+".join(map(re.escape, cells)) + r"(\s|$)"
    return any(re.search(pattern, line) for line in screen.splitlines())


def in_rate(screen: str) -> float:
    found = re.search(r"^│ in\s+([\d,.]+)/s", screen, re.MULTILINE)
    return float(found.group(1).replace(",", "")) if found else 0.0


@pytest.fixture
def serve(emulator: Emulator, pubsub: PubSubNames) -> Iterator[Serve]:
    with tempfile.TemporaryDirectory(prefix="top-") as tmp:  # short: sun_path is 108 bytes
        daemon = Serve(
            emulator,
            pubsub,
            free_port(socket.AF_INET, socket.SOCK_DGRAM),
            free_port(),
            os.path.join(tmp, "in.sock"),
            os.path.join(tmp, "serve.log"),
        )
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    unique = f"ingest-top-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pane = Tmux(server=unique, session=unique)
    try:
        yield pane
    finally:
        pane.run("kill-server")  # our private server only


def send_paced(port: int, count: int, per_s: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for n in range(count):
            sock.sendto(b'{"n": %d, "from": "test_top_tmux"}' % n, ("127.0.0.1", port))
            delay = start + (n + 1) / per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def test_top_shows_what_was_sent_and_survives_the_daemon(serve: Serve, tmux: Tmux) -> None:
    rc_file = Path(serve.log_path).with_name("top.rc")
    top = f"{shlex.quote(sys.executable)} -m ingest top --url http://127.0.0.1:{serve.metrics_port}"
    tmux.start(top, 120, 40, rc_file)
    poll(lambda: "health OK" in tmux.screen(), "health OK on screen", 20, tmux.screen)

    # While a paced load runs, the in-rate is non-zero.
    load = threading.Thread(target=send_paced, args=(serve.udp_port, VALID, PACE_PER_S))
    load.start()
    try:
        seen_running: list[bool] = []

        def rate_while_loading() -> bool:
            if in_rate(tmux.screen()) > 0:
                seen_running.append(load.is_alive())
                return True
            return False

        poll(rate_while_loading, "non-zero in-rate", 20, tmux.screen)
        assert seen_running == [True], "the rate only showed after the load had ended"
    finally:
        load.join(timeout=30)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for bad in (b"not json", b"[1, 2]", b"{oops", b"42"):  # JSON to ingest, and invalid
            sock.sendto(bad, serve.unix_path)
        for n in range(STATSD):  # one event each: a second format in use
            sock.sendto(b"a.hits:%d|c" % n, serve.unix_path)

    # The totals match what was sent, exactly, with thousands separators.
    def totals_match() -> bool:
        screen = tmux.screen()
        return (
            row(screen, "received", "1,241", "rejected", "4")
            and row(screen, "published", "1,237", "dropped", "0")
            and "accounted ✓" in screen
        )

    poll(totals_match, "exact totals", 20, tmux.screen)
    screen = tmux.screen()
    assert row(screen, f"udp:127.0.0.1:{serve.udp_port}", "up")
    assert row(screen, f"unix:{serve.unix_path}", "up")
    assert row(screen, "rejected", "invalid_json", "2") and row(
        screen, "rejected", "not_object", "2"
    )
    # JSON and statsd: a row each, with its rate (whatever it is by now) and total.
    assert re.search(r"│\s+json\s+\S+/s\s+1,238\s.*\n│\s+statsd\s+\S+/s\s+3\s", screen)

    # The daemon stops: DISCONNECTED, the last numbers kept. It comes back: reconnected.
    assert serve.stop() == 0
    poll(lambda: "DISCONNECTED" in tmux.screen(), "DISCONNECTED", 15, tmux.screen)
    assert row(tmux.screen(), "published", "1,237")
    serve.start()

    def reconnected() -> bool:
        screen = tmux.screen()
        return "DISCONNECTED" not in screen and row(screen, "published", "0")

    poll(reconnected, "reconnection to the restarted daemon", 20, tmux.screen)

    # q quits: the pane (and so the session) ends, with exit status 0.
    tmux.run("send-keys", "-t", tmux.session, "q")
    poll(lambda: not tmux.alive(), "exit on q", 10, tmux.screen)
    assert rc_file.read_text().strip() == "0"


def test_top_without_a_daemon_says_so_and_quits_on_ctrl_c(tmux: Tmux, tmp_path: Path) -> None:
    rc_file = tmp_path / "top.rc"
    nobody = free_port()  # bound and released: nothing listens there
    top = f"{shlex.quote(sys.executable)} -m ingest top --url 127.0.0.1:{nobody}/metrics"
    tmux.start(top, 60, 20, rc_file)
    poll(
        lambda: "DISCONNECTED: connection refused" in tmux.screen(), "DISCONNECTED", 20, tmux.screen
    )
    tmux.run("send-keys", "-t", tmux.session, "C-c")
    poll(lambda: not tmux.alive(), "exit on Ctrl-C", 10, tmux.screen)
    assert rc_file.read_text().strip() == "0"


def test_serve_dashboard_draws_below_the_log(
    emulator: Emulator, pubsub: PubSubNames, tmux: Tmux, tmp_path: Path
) -> None:
    """``ingest serve --dashboard`` on a terminal: log lines above, the live
    view below; SIGINT removes the view and the stop lines are logged."""
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    rc_file = tmp_path / "serve.rc"
    serve = (
        f"PUBSUB_EMULATOR_HOST={emulator.host} {shlex.quote(sys.executable)} -m ingest serve "
        f"--project {pubsub.project} --topic {pubsub.topic_id} --udp 127.0.0.1:{port} "
        f"--metrics 127.0.0.1:{free_port()} --dashboard"
    )
    tmux.start(serve, 120, 50, rc_file, after="sleep 60")
    poll(lambda: "health OK" in tmux.screen(), "the inline dashboard", 30, tmux.screen)
    send_paced(port, 321, 1000)
    poll(lambda: row(tmux.screen(), "published", "321"), "321 published", 20, tmux.screen)
    screen = tmux.screen()
    assert screen.index("ready: ") < screen.index("health OK")  # the log is above the view
    tmux.run("send-keys", "-t", tmux.session, "C-c")
    poll(lambda: rc_file.exists(), "serve to exit", 20, tmux.screen)
    assert rc_file.read_text().strip() == "0"
    assert "stopped: received=321 published=321" in tmux.screen()
