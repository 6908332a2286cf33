"""Test helpers: ``ingest send`` as a real subprocess, senders, ports, waits.

``ingest serve`` runs under tools.testing.daemon (DaemonProcess, Daemons),
the runner the bench uses too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tools.testing.daemon import INGEST, POLL_S

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


if TYPE_CHECKING:  # conftest imports this module: no import cycle at run time
    from tests.conftest import PubSubNames


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
