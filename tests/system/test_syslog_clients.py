"""Real syslog clients: Python's SysLogHandler and util-linux logger(1), sending
to a unix datagram socket; what they send must parse as the unit tests say."""

from __future__ import annotations

import json
import logging
import logging.handlers
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.receive.syslog import (
    Syslog,
    parse,
)
from tests.unit.test_syslog import BODY, USER_NOTICE, assert_rfc5424_stamp, rfc3164_stamps


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"message": record.getMessage(), "level": record.levelname})


@pytest.fixture
def receiver(sockdir: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound unix datagram socket, as ingest binds one, and its path."""
    path = str(sockdir / "syslog.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        yield path, sock


@pytest.mark.parametrize(
    ("level", "facility", "ident", "append_nul"),
    [
        (logging.WARNING, "user", None, True),  # the defaults
        (logging.DEBUG, "local0", None, True),
        (logging.INFO, "local7", None, False),
        (logging.ERROR, "daemon", "myapp: ", True),
        (logging.CRITICAL, "auth", "app[7]: ", True),
    ],
)
def test_python_syslog_handler(
    receiver: tuple[str, socket.socket],
    level: int,
    facility: str,
    ident: str | None,
    append_nul: bool,
) -> None:
    path, sock = receiver
    handler = logging.handlers.SysLogHandler(
        address=path,
        facility=logging.handlers.SysLogHandler.facility_names[facility],
        socktype=socket.SOCK_DGRAM,
    )
    handler.append_nul = append_nul
    if ident is not None:
        handler.ident = ident
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test_syslog.{facility}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        log.log(level, "héllo ✓ %s", "wörld")
        data = sock.recv(65536)
    finally:
        log.removeHandler(handler)
        handler.close()
    expected_body = JsonFormatter().format(
        logging.LogRecord("x", level, "", 0, "héllo ✓ wörld", None, None)
    )
    got = parse(data)
    assert got.body == expected_body.encode()
    severity = {
        logging.DEBUG: "debug",
        logging.INFO: "info",
        logging.WARNING: "warning",
        logging.ERROR: "err",
        logging.CRITICAL: "crit",
    }[level]
    app = {None: (), "myapp: ": (("app", "myapp"),), "app[7]: ": (("app", "app"), ("pid", "7"))}
    assert got.facts == (("severity", severity), ("facility", facility), *app[ident])
    assert data.endswith(b"\x00") is append_nul


LOGGER = shutil.which("logger")


needs_logger = pytest.mark.skipif(LOGGER is None, reason="util-linux logger is not installed")


def run_logger(path: str, *args: str) -> tuple[int, float, float]:
    """Run ``logger -u path --socket-errors=off ARGS``: its pid and the wall
    clock bounds around it."""
    assert LOGGER is not None
    before = time.time()
    proc = subprocess.Popen([LOGGER, "-u", path, "--socket-errors=off", *args])
    assert proc.wait(timeout=10) == 0
    return proc.pid, before, time.time()


@needs_logger
def test_logger_local_rfc3164(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    body = '{"msg":"héllo ✓","n":[1,2.50]}'
    _, before, after = run_logger(path, "-t", "app", "-p", "local3.err", body)
    got = parse(sock.recv(65536))
    assert got.body == body.encode()
    facts = dict(got.facts)
    assert facts.pop("timestamp") in rfc3164_stamps(before, after)
    assert facts == {"severity": "err", "facility": "local3", "app": "app"}


@needs_logger
def test_logger_local_rfc3164_with_pids(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    run_logger(path, "-t", "app", "--id=1234", BODY.decode())
    assert dict(parse(sock.recv(65536)).facts)["pid"] == "1234"
    pid, _, _ = run_logger(path, "-t", "app", "-i", BODY.decode())
    got = parse(sock.recv(65536))
    assert got.body == BODY
    assert dict(got.facts)["pid"] == str(pid)


@needs_logger
def test_logger_rfc3164_with_hostname(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    pid, before, after = run_logger(path, "--rfc3164", "-t", "app", "-i", BODY.decode())
    got = parse(sock.recv(65536))
    assert got.body == BODY
    facts = dict(got.facts)
    assert facts.pop("timestamp") in rfc3164_stamps(before, after)
    # logger cuts the hostname at its first dot for RFC 3164.
    host = socket.gethostname().split(".")[0]
    assert facts == {**dict(USER_NOTICE), "host": host, "app": "app", "pid": str(pid)}


@needs_logger
def test_logger_rfc5424(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    body = '{"msg":"héllo ✓"}'
    _, before, after = run_logger(path, "--rfc5424", "-t", "app", "-p", "daemon.info", body)
    data = sock.recv(65536)
    assert b"[timeQuality " in data
    got = parse(data)
    assert got.body == body.encode()
    facts = dict(got.facts)
    assert_rfc5424_stamp(facts.pop("timestamp"), before, after)
    assert facts == {
        "severity": "info",
        "facility": "daemon",
        "host": socket.gethostname(),
        "app": "app",
    }


@needs_logger
def test_logger_rfc5424_structured_data_msgid_and_pid(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    pid, _, _ = run_logger(
        path,
        "--rfc5424",
        "-t",
        "app",
        "-i",
        "--msgid",
        "MID",
        "--sd-id",
        "zoo@123",
        "--sd-param",
        'tiger="hungry \\"x\\" \\] \\\\"',
        "--sd-param",
        'n="2"',
        "--sd-id",
        "b@2",
        "--sd-param",
        'c="\\]"',
        BODY.decode(),
    )
    data = sock.recv(65536)
    assert b'][zoo@123 tiger="hungry \\"x\\" \\] \\\\" n="2"][b@2 c="\\]"] ' in data
    got = parse(data)
    assert got.body == BODY
    assert dict(got.facts)["pid"] == str(pid)
    assert dict(got.facts)["app"] == "app"


@needs_logger
def test_logger_rfc5424_without_time_and_host(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    run_logger(path, "--rfc5424=notime,notq,nohost", "-t", "app", BODY.decode())
    data = sock.recv(65536)
    assert data == b'<13>1 - - app - - - {"k":1}'
    assert parse(data) == Syslog(BODY, (*USER_NOTICE, ("app", "app")))


@needs_logger
def test_logger_stdin_lines_are_datagrams(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    assert LOGGER is not None
    lines = [b'{"a":1}', b'{"b":"\xc3\xa9"}']
    subprocess.run(
        [LOGGER, "-u", path, "--socket-errors=off", "--rfc5424", "-t", "app"],
        input=b"\n".join(lines) + b"\n",
        check=True,
        timeout=10,
    )
    assert [parse(sock.recv(65536)).body for _ in lines] == lines
