"""``ingest send`` as a subprocess, against sockets the test binds itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    free_udp_port,
    ipv6_loopback_available,
    run_send,
    short_dir,
    stale_socket_file,
    udp_addr,
)

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
    path = sockdir / "missing.sock"
    result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, str(path), "No such file or directory")


def test_stale_unix_socket_file_exits_1(sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    stale_socket_file(path)
    result = run_send("--unix", str(path), '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, str(path), "Connection refused")


def test_udp_port_without_listener_exits_1() -> None:
    addr = f"127.0.0.1:{free_udp_port()}"
    result = run_send("--udp", addr, '{"a":1}')
    assert result.returncode == 1
    assert_unreachable(result.stderr, addr, "Connection refused")


def test_bad_udp_address_exits_2() -> None:
    result = run_send("--udp", "localhost", '{"a":1}')
    assert result.returncode == 2
    assert "--udp" in result.stderr.decode()


def test_unix_and_udp_are_exclusive(sockdir: Path) -> None:
    result = run_send("--unix", str(sockdir / "x.sock"), "--udp", "127.0.0.1:1", '{"a":1}')
    assert result.returncode == 2
    assert "not allowed with" in result.stderr.decode()
