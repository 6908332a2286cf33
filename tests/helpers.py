"""Test helpers: ``ingest send`` as a real subprocess, senders, ports, waits.

``ingest serve`` runs under tools.testing.daemon (DaemonProcess, Daemons),
the runner the bench uses too.

This is the suite's library: tests import their shared helpers from here,
never from a conftest.py (those hold fixtures and hooks only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio
from google.pubsub_v1.types import pubsub as pubsub_types

from tools.testing.daemon import INGEST, POLL_S

if TYPE_CHECKING:
    from tools.testing.emulator import Emulator

# The repository's root: tests read its README, units and examples.
REPO = Path(__file__).resolve().parent.parent
# sun_path holds 108 bytes on Linux; stay well inside it.
MAX_UNIX_PATH = 100


def subject_to_file_modes() -> tuple[str, ...]:
    """A command prefix under which file modes apply as to any user. Tests run
    as root, which CAP_DAC_OVERRIDE lets past every mode: setpriv drops it
    (and CAP_DAC_READ_SEARCH) from the bounding set, so the command is still
    root -- it can reach the virtualenv wherever the clone lives, even under a
    0700 directory -- but a file of mode 0 is closed to it. Not root: nothing
    to drop."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        import pytest

        pytest.skip("running as root and setpriv (util-linux) is missing")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def closed_tcp_port() -> int:
    """A loopback TCP port with no listener (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def udp_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` when a socket path inside it stays short, else a short
    temporary directory under /tmp (removed afterwards)."""
    if len(str(tmp_path)) + 20 < MAX_UNIX_PATH:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="ingest-", dir="/tmp") as path:
        yield Path(path)


def stale_socket_file(path: Path) -> None:
    """Leave a socket file nobody listens on: bind, close, do not unlink."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()


def send_unix(path: str | Path, data: bytes) -> None:
    """One datagram over a blocking unix socket: with net.unix.max_dgram_qlen
    as low as 10, a non-blocking sender would get EAGAIN; a blocking one waits."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(data, str(path))


def send_udp(addr: tuple[str, int], data: bytes) -> None:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, addr)


class UnixSender:
    """A connected, blocking unix datagram sender for many datagrams."""

    def __init__(self, path: str | Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UnixSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_send(
    *args: str | bytes, stdin: bytes = b"", timeout_s: float = 20.0
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ingest send ARGS`` to completion (bounded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return subprocess.run(
        [INGEST, "send", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


@dataclass(frozen=True)
class PubSubNames:
    project: str
    topic_id: str
    topic: str  # projects/P/topics/T
    subscription: str  # projects/P/subscriptions/S


def another_topic(
    emulator: Emulator, names: PubSubNames, suffix: str, *, ordered: bool = False
) -> PubSubNames:
    """A topic with a subscription (``ordered``: with message ordering), in
    the same project, named after ``names``'."""
    other = PubSubNames(
        names.project,
        f"{names.topic_id}-{suffix}",
        f"{names.topic}-{suffix}",
        f"{names.subscription}-{suffix}",
    )
    emulator.create_topic(other.topic)
    emulator.create_subscription(other.subscription, other.topic, ordered=ordered)
    return other


def serve_args(names: PubSubNames, *extra: str) -> list[str]:
    """``ingest serve`` flags for the test's topic. ``--metrics ""`` keeps
    parallel daemons off the shared default metrics port; a 1 ms linger keeps
    small tests quick."""
    return [
        "--project",
        names.project,
        "--topic",
        names.topic_id,
        "--metrics",
        "",
        "--batch-linger-ms",
        "1",
        *extra,
    ]


def run_ingest(
    command: str, *args: str, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``ingest COMMAND ARGS`` without INGEST_* from the test's environment.
    A config error must come before serve contacts or binds anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    return subprocess.run(
        [*wrapper, INGEST, command, *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=30,
        env=env,
        check=False,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ingest: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def pull_distinct(
    emulator: Emulator, subscription: str, count: int, timeout_s: float = 30, threads: int = 4
) -> set[bytes]:
    """Pull until ``count`` distinct messages arrived (the emulator hands out
    <= 100 per Pull, so several loops run at once), then until quiet, so
    extra messages (an event sent twice) would be seen too."""
    seen: set[bytes] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s

    def loop() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= count:
                    return
            batch = emulator.pull(subscription)
            with lock:
                seen.update(batch)
            if not batch:
                time.sleep(0.02)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout_s + 5)
    seen.update(emulator.pull_quiet(subscription, quiet_s=0.5, timeout_s=10))
    return seen


PublishRequest = pubsub_types.PublishRequest.pb()
PublishResponse = pubsub_types.PublishResponse.pb()


def publish_server(
    publish: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) whose Publisher.Publish is ``publish``,
    on a free loopback port, and the port: for the faults the emulator
    cannot produce (a code it never answers, one topic failing alone)."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Publisher",
        {
            "Publish": grpc.unary_unary_rpc_method_handler(
                publish,
                request_deserializer=PublishRequest.FromString,
                response_serializer=PublishResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    return server, server.add_insecure_port("127.0.0.1:0")


class ServedFake(Protocol):
    """A fake gRPC service for a fault the emulator cannot produce: its
    server, not yet started, and the port it is bound to."""

    server: grpc.aio.Server
    port: int


@contextlib.asynccontextmanager
async def serving(fake: ServedFake) -> AsyncIterator[grpc.aio.Channel]:
    """``fake`` started, and a channel to it; both stopped afterwards."""
    await fake.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fake.port}") as channel:
            yield channel
    finally:
        await fake.server.stop(None)
