"""A real web app end to end: examples/wsgi_app.py under gunicorn (4 workers,
--preload), a real ``ingest serve``, real HTTP requests, the real emulator.

Each request carries a unique X-Request-Id that the app puts in its event;
every one must arrive in the subscription, and the master's deploy-marker
event exactly once (the workers inherit an Emitter that was already connected
before the fork and must each open their own socket).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tests.helpers import REPO, PubSubNames, pull_distinct, serve_args, wait_for
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
EXAMPLES = REPO / "examples"
WORKERS = 4
REQUESTS = 400
CLIENT_THREADS = 8
HTTP_TIMEOUT_S = 10.0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """gunicorn in its own session; stopped by the master's PID (SIGTERM,
    then SIGKILL to the group it leads if it does not exit in time)."""

    def __init__(self, app_env: dict[str, str], log_path: Path) -> None:
        self.port = free_tcp_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, **app_env}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    GUNICORN,
                    "--workers",
                    str(WORKERS),
                    "--preload",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--chdir",
                    str(EXAMPLES),
                    "wsgi_app:app",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.log}"
            try:
                with urllib.request.urlopen(f"{self.base}/_stats", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(up, timeout_s, "gunicorn to answer")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session it leads
            self.proc.wait(10)


def get(url: str, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url)
    if request_id:
        request.add_header("X-Request-Id", request_id)
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200
        return response.read(), dict(response.headers)


def test_every_request_event_arrives_from_gunicorn_workers(
    daemons: Daemons, pubsub: PubSubNames, emulator: Emulator, sockdir: Path, tmp_path: Path
) -> None:
    path = sockdir / "ingest.sock"
    daemons.start(*serve_args(pubsub, "--unix", str(path))).wait_ready()
    server = Gunicorn({"INGEST_EXAMPLE_UNIX": str(path)}, tmp_path / "gunicorn.log")
    try:
        server.wait_ready()
        ids = [uuid.uuid4().hex for _ in range(REQUESTS)]
        resent = 0
        resent_lock = threading.Lock()

        def request(request_id: str) -> None:
            nonlocal resent
            # The app tells whether its event reached the kernel; a drop
            # (the default qlen of 10 can overflow in a burst) is repeated
            # with the same id, so exactly these ids must arrive.
            for _ in range(100):
                body, headers = get(f"{server.base}/orders/{request_id}", request_id)
                assert body == request_id.encode()
                if headers["X-Ingest-Sent"] == "1":
                    return
                with resent_lock:
                    resent += 1
            raise AssertionError(f"event of {request_id} dropped 100 times")

        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(request, ids))

        worker_stats = {}
        for _ in range(200):
            stats = orjson.loads(get(f"{server.base}/_stats")[0])
            worker_stats[stats["pid"]] = stats
            if len(worker_stats) == WORKERS:
                break
        master_pid = server.proc.pid
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log

    messages = pull_distinct(emulator, pubsub.subscription, REQUESTS + 1)
    events = [orjson.loads(m) for m in messages]
    started = [e for e in events if e["event"] == "app_started"]
    requests = [e for e in events if e["event"] == "request"]
    assert started == [{"event": "app_started", "pid": master_pid}]
    assert sorted(e["request_id"] for e in requests) == sorted(ids)
    assert all(e["path"] == f"/orders/{e['request_id']}" for e in requests)
    # Handled by the forked workers, never the master ...
    worker_pids = {e["pid"] for e in requests}
    assert master_pid not in worker_pids
    assert worker_pids <= set(worker_stats)
    # ... each of which connected a socket of its own and counted only its
    # own events (the master's marker is not in any worker's sent count).
    assert len(worker_stats) == WORKERS, f"/_stats reached only {sorted(worker_stats)}"
    for stats in worker_stats.values():
        assert stats["connects"] == 1, stats
    assert sum(s["sent"] for s in worker_stats.values()) == REQUESTS
    assert sum(s["dropped"] for s in worker_stats.values()) == resent
