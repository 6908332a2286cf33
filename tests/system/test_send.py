"""``ingest send`` as a subprocess, against sockets the test binds itself."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    free_udp_port,
    ipv6_loopback_available,
    run_send,
    short_dir,
    stale_socket_file,
    subject_to_file_modes,
    udp_addr,
)
from tools.testing.daemon import INGEST

EVENTS = [
    '{"msg":"héllo — 世界 🎉"}',
    '  { "spaced" : [ 1 , 2 ] }  ',
    '{"n":3}',
]


class Receiver:
    """A bound datagram socket standing in for the daemon."""

    def __init__(self, sock: socket.socket, target: list[str]) -> None:
        self.sock = sock
        self.target = target  # the `ingest send` arguments that reach it
        sock.settimeout(5)

    def recv_all(self, count: int) -> list[bytes]:
        return [self.sock.recv(65536) for _ in range(count)]

    def assert_empty(self) -> None:
        """Nothing queued: a finished local sender's datagrams are already here."""
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        finally:
            self.sock.settimeout(5)
        raise AssertionError(f"unexpected datagram {data!r}")


@pytest.fixture
def sockdir(tmp_path: Path) -> Iterator[Path]:
    with short_dir(tmp_path) as path:
        yield path


@pytest.fixture(params=["unix", "udp4", "udp6"])
def receiver(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[Receiver]:
    if request.param == "unix":
        path = sockdir / "recv.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        target = ["--unix", str(path)]
    else:
        if request.param == "udp6" and not ipv6_loopback_available():
            pytest.skip("no IPv6 loopback (::1) on this host")
        host = "::1" if request.param == "udp6" else "127.0.0.1"
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        target = ["--udp", udp_addr(host, sock.getsockname()[1])]
    with sock:
        yield Receiver(sock, target)


def test_arguments_arrive_byte_for_byte(receiver: Receiver) -> None:
    result = run_send(*receiver.target, *EVENTS)
    assert result.returncode == 0, result.stderr
    assert receiver.recv_all(len(EVENTS)) == [event.encode() for event in EVENTS]
    receiver.assert_empty()


def test_stdin_lines_arrive_one_datagram_each(receiver: Receiver) -> None:
    stdin = "\n".join(EVENTS[:2]) + "\n\n   \n" + EVENTS[2] + "\r\n"
    result = run_send(*receiver.target, stdin=stdin.encode())
    assert result.returncode == 0, result.stderr
    # Blank lines are skipped; the line ending (LF or CRLF) is not sent.
    assert receiver.recv_all(len(EVENTS)) == [event.encode() for event in EVENTS]
    receiver.assert_empty()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [('{"a":', "invalid JSON"), ("[1, 2]", "not a JSON object"), ("", "invalid JSON")],
)
def test_invalid_argument_is_refused_before_sending(
    receiver: Receiver, bad: str, reason: str
) -> None:
    result = run_send(*receiver.target, '{"ok":1}', bad, '{"ok":3}')
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "event 2" in stderr and reason in stderr, stderr
    assert "Traceback" not in stderr
    receiver.assert_empty()  # every argument is validated before any is sent


def test_invalid_stdin_line_stops_there(receiver: Receiver) -> None:
    stdin = b'{"line":1}\n\n{"line":3}\n{oops\n{"line":5}\n'
    result = run_send(*receiver.target, stdin=stdin)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "stdin line 4" in stderr and "invalid JSON" in stderr, stderr
    # A pipe may never end, so lines go out as they are read, up to the bad one.
    assert receiver.recv_all(2) == [b'{"line":1}', b'{"line":3}']
    receiver.assert_empty()


def test_invalid_utf8_argument_is_refused(receiver: Receiver) -> None:
    result = run_send(*receiver.target, b'{"bytes":"\xff\xfe"}')
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "event 1" in stderr and "UTF-8" in stderr, stderr
    assert "Traceback" not in stderr
    receiver.assert_empty()


def test_invalid_utf8_stdin_line_is_refused(receiver: Receiver) -> None:
    result = run_send(*receiver.target, stdin=b'{"ok":"\xc3\xa9"}\n{"bad":"\xc3\x28"}\n{"n":3}\n')
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "stdin line 2" in stderr and "UTF-8" in stderr, stderr
    assert "Traceback" not in stderr
    assert receiver.recv_all(1) == ['{"ok":"é"}'.encode()]
    receiver.assert_empty()


def test_invalid_arguments_win_over_an_unreachable_target(sockdir: Path) -> None:
    result = run_send("--unix", str(sockdir / "missing.sock"), "not json")
    assert result.returncode == 2
    assert "event 1" in result.stderr.decode()


# ------------------------------------------------------- nothing listens


def assert_unreachable(result_stderr: bytes, *needles: str) -> None:
    stderr = result_stderr.decode()
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_missing_unix_path_exits_1(sockdir: Path) -> None:
    for path in (sockdir / "missing.sock", sockdir / "no-dir" / "missing.sock"):
        result = run_send("--unix", str(path), '{"a":1}')
        assert result.returncode == 1
        assert_unreachable(result.stderr, f"no socket at {path}", "ENOENT")


def test_stale_unix_socket_file_exits_1(sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    stale_socket_file(path)
    result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, f"nothing listens at unix {path}", "ECONNREFUSED")


def test_udp_port_without_listener_exits_1() -> None:
    addr = f"127.0.0.1:{free_udp_port()}"
    result = run_send("--udp", addr, '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, f"nothing listens at udp {addr}", "ECONNREFUSED")


@pytest.mark.parametrize(
    ("addr", "needle"),
    [
        ("localhost", "must be HOST:PORT"),
        ("a..b:5140", "not a valid host name"),  # getaddrinfo: UnicodeError, not gaierror
        ("127.0.0.1:0", "port 0"),
        ("no-such-host.invalid:5140", "cannot resolve"),  # RFC 2606: never resolves
    ],
)
def test_bad_udp_address_exits_2(addr: str, needle: str) -> None:
    result = run_send("--udp", addr, '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, "--udp: ", needle)


def test_unix_and_udp_are_exclusive(sockdir: Path) -> None:
    result = run_send("--unix", str(sockdir / "x.sock"), "--udp", "127.0.0.1:1", '{"a":1}')
    assert result.returncode == 2
    assert "not allowed with" in result.stderr.decode()


# ------------------------------------------- the target refuses (issue 8)


def test_datagram_too_large_names_the_event_and_its_size(receiver: Receiver) -> None:
    """EMSGSIZE: over 65,507 bytes for UDP (IPv4), 65,527 (IPv6); for a unix
    datagram, over the sender's send buffer (net.core.wmem_default)."""
    wmem_default = int(Path("/proc/sys/net/core/wmem_default").read_text())
    big = b'{"pad":"' + b"x" * (max(wmem_default, 65_536) + 1024) + b'"}'
    stdin = b'{"n":1}\n' + big + b'\n{"n":3}\n'
    result = run_send(*receiver.target, stdin=stdin)
    assert result.returncode == 2
    assert_unreachable(
        result.stderr,
        f"stdin line 2: datagram of {len(big):,} bytes is too large for the socket (",
        "EMSGSIZE",
        "1 sent before it",
    )
    assert receiver.recv_all(1) == [b'{"n":1}']
    receiver.assert_empty()


def test_udp_limit_is_in_the_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        addr = udp_addr("127.0.0.1", sock.getsockname()[1])
        at_limit = b'{"p":"' + b"x" * (65_507 - 8) + b'"}'
        assert len(at_limit) == 65_507
        result = run_send("--udp", addr, at_limit.decode(), '{"p":"' + "x" * 65_500 + '"}')
        assert result.returncode == 2
        assert_unreachable(result.stderr, "event 2: datagram of 65,508 bytes", "65,507")
        sock.settimeout(5)
        assert sock.recv(70_000) == at_limit  # the largest one that fits goes through


def run_send_as(wrapper: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``ingest send ARGS`` under ``wrapper`` (setpriv), without INGEST_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return subprocess.run(
        [*wrapper, INGEST, "send", *args], capture_output=True, timeout=20, env=env, check=False
    )


def test_permission_denied_on_the_socket_exits_4() -> None:
    wrapper = subject_to_file_modes()
    with tempfile.TemporaryDirectory(prefix="ingest-", dir="/tmp") as directory:
        path = Path(directory) / "in.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(5)
            os.chmod(path, 0o666)
            allowed = run_send_as(wrapper, "--unix", str(path), '{"n":1}')
            assert allowed.returncode == 0, allowed.stderr  # the same user, the same path
            assert sock.recv(100) == b'{"n":1}'
            os.chmod(path, 0)
            denied = run_send_as(wrapper, "--unix", str(path), '{"n":2}')
            assert denied.returncode == 4
            assert_unreachable(denied.stderr, f"permission denied on {path}", "EACCES")


def test_permission_denied_by_the_network_exits_4() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("255.255.255.255", 5140))
        except PermissionError:
            pass
        except OSError as exc:
            pytest.skip(f"no broadcast route here ({exc.strerror})")
        else:
            pytest.skip("this kernel lets a socket without SO_BROADCAST connect to broadcast")
    result = run_send("--udp", "255.255.255.255:5140", '{"n":1}')
    assert result.returncode == 4
    assert_unreachable(result.stderr, "permission denied sending to udp 255.255.255.255:5140")


def test_regular_file_at_unix_path_exits_2(sockdir: Path) -> None:
    path = sockdir / "file.sock"
    path.write_text("not a socket")
    result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 2  # connect(2) says ECONNREFUSED; nothing will ever listen
    assert_unreachable(result.stderr, f"{path} is not a socket (a regular file)")


def test_stream_socket_at_unix_path_exits_2(sockdir: Path) -> None:
    path = sockdir / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, f"{path} is not a datagram socket", "EPROTOTYPE")


def test_path_through_a_file_exits_2(sockdir: Path) -> None:
    (sockdir / "file").write_text("")
    path = sockdir / "file" / "x.sock"
    result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, f"{path}: a component is not a directory", "ENOTDIR")


@pytest.mark.parametrize("length", [108, 300])
def test_unix_path_too_long_exits_2(length: int) -> None:
    path = "/tmp/" + "a" * (length - 5)
    result = run_send("--unix", path, '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, "--unix: ", f"is {length} bytes", "at most 107")


def test_unix_path_too_long_counts_bytes_not_characters() -> None:
    path = "/tmp/" + "é" * 60  # 65 characters, 125 bytes
    result = run_send("--unix", path, '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, "--unix: ", "is 125 bytes")


def test_empty_unix_path_is_not_the_default() -> None:
    result = run_send("--unix", "", '{"a":1}')
    assert result.returncode == 2
    assert_unreachable(result.stderr, "--unix: must not be empty")


def test_non_utf8_unix_path_is_used_as_given(sockdir: Path) -> None:
    path = os.fsencode(sockdir) + b"/caf\xe9.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        result = run_send("--unix", path, '{"a":1}')
        assert result.returncode == 0, result.stderr
        assert sock.recv(100) == b'{"a":1}'
    missing = os.fsencode(sockdir) + b"/gon\xe9.sock"
    result = run_send("--unix", missing, '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, "no socket at ", "gon\\xe9.sock")


def test_receiver_that_never_reads_exits_1(sockdir: Path) -> None:
    path = sockdir / "full.sock"
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    stdin = b'{"n":1}\n' * (qlen + 50)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        result = run_send("--unix", str(path), stdin=stdin)
    assert result.returncode == 1
    assert_unreachable(result.stderr, f"unix {path}", "is not reading", "sent before it")


def test_unreadable_stdin_exits_2(receiver: Receiver) -> None:
    # The write end of a pipe: read() fails with EBADF. (A directory would do,
    # but the interpreter itself refuses to start on one.)
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run(
            [INGEST, "send", *receiver.target],
            stdin=write_end,
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 2
    assert_unreachable(result.stderr, "stdin: cannot read: ", "Bad file descriptor")
    receiver.assert_empty()


def test_closed_stdin_exits_2(receiver: Receiver) -> None:
    # The shell closes stdin (<&-) between fork and exec. Not preexec_fn: a
    # fork of this process (grpc's threads loaded by other tests) can log
    # from grpc's poller before the exec.
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', INGEST, "send", *receiver.target],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert_unreachable(result.stderr, "stdin")
    receiver.assert_empty()
