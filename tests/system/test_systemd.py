"""systemd: the unit files, socket activation for real, sd_notify, check-config.

Unit tests drive ingest.systemd with real sockets in-process. End-to-end
tests run ``ingest serve`` under ``systemd-socket-activate --datagram`` (it
ships with systemd and passes LISTEN_FDS/LISTEN_PID exactly as PID 1 does;
it exec()s the daemon once the first datagram arrives) and against a
NOTIFY_SOCKET the test binds and reads.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest import systemd
from ingest.config import ConfigError, Listener, load_file
from ingest.receive import kernel
from tests.helpers import (
    INGEST,
    REPO,
    PubSubNames,
    free_udp_port,
    send_udp,
    send_unix,
    serve_args,
    wait_for,
)
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import Emulator, free_port

UNITS = REPO / "systemd"
EXIT_OK = 0
EXIT_CONFIG = 2


class NotifyListener:
    """The systemd side of sd_notify: a unix datagram socket the test reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []  # (monotonic time, text)

    def collect(self, timeout_s: float) -> None:
        """Read whatever arrives for up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, prefix: str, timeout_s: float) -> tuple[float, str]:
        """The first message starting with ``prefix`` (already read or next)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for stamp, text in self.messages[seen:]:
                if text.startswith(prefix):
                    return stamp, text
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} within {timeout_s}s; got {self.messages}")
            self.collect(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- unit files


def analyze_verify(tmp_path: Path, drop_ins: dict[str, Path]) -> None:
    """systemd-analyze verify on the units as installed (the checkout's ingest
    for /usr/local/bin/ingest, ``drop_ins`` in NAME.d/ beside them, the man
    page where install-system puts it: verify runs ``man`` for each
    Documentation= entry). Unknown keys or bad values are only warnings
    (exit 0): it must be silent."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    for name in ("ingest.service", "ingest.socket"):
        text = (UNITS / name).read_text()
        # verify checks that ExecStart's program exists: use the checkout's.
        (tmp_path / name).write_text(text.replace("/usr/local/bin/ingest", INGEST))
    for installed, example in drop_ins.items():
        (tmp_path / installed).parent.mkdir(exist_ok=True)
        (tmp_path / installed).write_text(example.read_text())
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    shutil.copy(REPO / "docs/ingest.1", man / "ingest.1")
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "ingest.socket"), str(tmp_path / "ingest.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MANPATH": f"{tmp_path / 'man'}:"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_systemd_analyze_verify_passes_on_the_units(tmp_path: Path) -> None:
    analyze_verify(tmp_path, {})


# The drop-ins the guides show (docs/guides/udp-lan.md, real-pubsub.md), each
# as the unit's NAME.d/ file it is installed as.
DROP_INS = {
    "ingest.socket.d/lan.conf": REPO / "examples/lan/ingest.socket.d-lan.conf",
    "ingest.service.d/credentials.conf": REPO
    / "examples/real-pubsub/ingest.service.d-credentials.conf",
}


def test_systemd_analyze_verify_passes_on_the_units_with_the_documented_drop_ins(
    tmp_path: Path,
) -> None:
    analyze_verify(tmp_path, DROP_INS)


def test_units_say_what_the_brief_requires() -> None:
    service = (UNITS / "ingest.service").read_text()
    for line in (
        "Type=notify",
        "ExecStartPre=/usr/local/bin/ingest check-config --config /etc/ingest/ingest.toml",
        "ExecStart=/usr/local/bin/ingest serve --config /etc/ingest/ingest.toml",
        "Restart=on-failure",
        "WatchdogSec=30",
        "TimeoutStopSec=30",
        "DynamicUser=yes",
        "RuntimeDirectory=ingest",
        "StateDirectory=ingest",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
    ):
        assert f"\n{line}\n" in service, line
    socket_unit = (UNITS / "ingest.socket").read_text()
    for line in (
        "ListenDatagram=/run/ingest/ingest.sock",
        "ListenDatagram=127.0.0.1:5140",
        "SocketMode=0660",
        "SocketGroup=www-data",
        "Service=ingest.service",
    ):
        assert f"\n{line}\n" in socket_unit, line
    # The stop timeout leaves room for the drain of the example configuration.
    example = load_file(str(UNITS / "ingest.toml"))
    assert float(example["drain_timeout"]) < 30
    sysctl = (UNITS / "99-ingest.conf").read_text()
    assert f"\nnet.unix.max_dgram_qlen = {kernel.UNIX_QLEN_RECOMMENDED}\n" in sysctl


def test_units_and_sysctl_agree_with_the_receive_buffer_default() -> None:
    """ingest.socket's ReceiveBuffer=, the drop-in's net.core.rmem_max and the
    example configuration all say what --udp-rcvbuf-bytes defaults to."""
    from ingest.config import Settings

    default = Settings.__dataclass_fields__["udp_rcvbuf_bytes"].default
    assert default >= 32 << 20
    socket_unit = (UNITS / "ingest.socket").read_text()
    match = re.search(r"(?m)^ReceiveBuffer=(\d+)M$", socket_unit)
    assert match and int(match[1]) << 20 == default
    sysctl = (UNITS / "99-ingest.conf").read_text()
    match = re.search(r"(?m)^net\.core\.rmem_max = (\d+)$", sysctl)
    assert match and int(match[1]) == default
    example = (UNITS / "ingest.toml").read_text()
    assert re.search(rf"(?m)^#udp_rcvbuf_bytes = {default}\b", example)


def test_example_config_names_every_key_and_every_value_is_valid(tmp_path: Path) -> None:
    from ingest.config import SERVE_OPTIONS

    text = (UNITS / "ingest.toml").read_text()
    # Every commented-out default, uncommented, must still be a valid file.
    uncommented = re.sub(r"(?m)^#(\w+ = )", r"\1", text)
    keys = set(re.findall(r"(?m)^(\w+) = ", uncommented))
    assert keys == {option.file_key for option in SERVE_OPTIONS}
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    for config in (UNITS / "ingest.toml", path):
        result = subprocess.run(
            [INGEST, "check-config", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
            check=False,
        )
        assert result.returncode == EXIT_OK, result.stderr


# -------------------------------------------------------------- check-config


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INGEST_")
        and k not in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    env.update(extra)
    return env


def check_config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGEST, "check-config", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(**env),
        check=False,
    )


def test_check_config_ok_prints_one_line_and_binds_nothing(sockdir: Path) -> None:
    path = sockdir / "never.sock"
    port = free_udp_port()
    # No emulator, no credentials: it must not need (or contact) Pub/Sub.
    result = check_config(
        "--project",
        "p",
        "--topic",
        "events",
        "--unix",
        str(path),
        "--udp",
        f"127.0.0.1:{port}",
        "--udp-allow",
        "10.0.0.0/8",
    )
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "projects/p/topics/events" in lines[0]
    assert f"unix:{path}" in lines[0]
    assert f"udp:127.0.0.1:{port}" in lines[0]
    assert "10.0.0.0/8" in lines[0]
    assert not path.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # still free


def test_check_config_errors_exit_2_naming_the_flag(tmp_path: Path) -> None:
    cases = [
        (["--project", "p", "--topic", "ab"], {}, "--topic"),
        (["--topic", "events"], {}, "--project"),
        (["--project", "p", "--topic", "events", "--udp-allow", "10.0.0.1/8"], {}, "--udp-allow"),
        (
            ["--project", "p", "--topic", "events"],
            {"INGEST_UNIX_GROUP": "no-such-grp"},
            "--unix-group",
        ),
        (["--config", str(tmp_path / "missing.toml")], {}, "--config"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('project = "p"\ntopic = "events"\npublishers = 0\n')
    cases.append((["--config", str(bad)], {}, "--publishers"))
    for args, env, flag in cases:
        result = check_config(*args, **env)
        assert result.returncode == EXIT_CONFIG, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"ingest: error: {flag}"), result.stderr
        assert result.stdout == ""


def test_check_config_refuses_the_spool_directory_serve_would_refuse(tmp_path: Path) -> None:
    """check-config (ExecStartPre) and serve validate the same things: a spool
    directory others can write in, or a symlink, fails here too, and a missing
    one is fine (serve creates it) and is not created by the check."""
    base = ["--project", "p", "--topic", "events"]
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(shared)
    for directory, words in ((shared, "writable by group or others"), (link, "symbolic link")):
        result = check_config(*base, "--spool-dir", str(directory))
        assert result.returncode == EXIT_CONFIG, result.stdout
        assert result.stderr.startswith("ingest: error: --spool-dir"), result.stderr
        assert words in result.stderr
    missing = tmp_path / "later"
    result = check_config(*base, "--spool-dir", str(missing))
    assert result.returncode == EXIT_OK, result.stderr
    assert not missing.exists()


# ------------------------------------------------------ listen_fds, in-process


def test_listen_fds_for_another_pid_is_ignored_and_unset() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd.listen_fds(env) == []
    assert env == {}  # never inherited by a child
    env = {"LISTEN_PID": "x", "LISTEN_FDS": "1"}
    assert systemd.listen_fds(env) == []
    assert env == {}
    assert systemd.listen_fds({}) == []


def test_identify_describes_a_socket_by_family_type_and_address(sockdir: Path) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(str(sockdir / "a.sock"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0ingest-test-{os.getpid()}")
    try:
        got = systemd.identify(os.dup(unix.fileno()))
        assert got.listener == Listener("unix", path=str(sockdir / "a.sock"))
        got.sock.close()
        got = systemd.identify(os.dup(udp.fileno()))
        assert got.listener == Listener("udp", host="127.0.0.1", port=udp.getsockname()[1])
        got.sock.close()
        got = systemd.identify(os.dup(abstract.fileno()))
        assert got.listener.path == f"@ingest-test-{os.getpid()}"
        got.sock.close()
    finally:
        unix.close()
        udp.close()
        abstract.close()


def test_identify_refuses_streams_and_non_sockets() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    fd = os.dup(tcp.fileno())
    try:
        with pytest.raises(ConfigError, match=r"^--udp: .*SOCK_STREAM.*ListenDatagram="):
            systemd.identify(fd)
    finally:
        os.close(fd)
        tcp.close()
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ConfigError, match=r"^LISTEN_FDS: fd .* is not a socket"):
            systemd.identify(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def _passed(listener: Listener) -> systemd.PassedSocket:
    # plan_listeners only looks at the listener; the socket is a stand-in.
    return systemd.PassedSocket(3, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), listener)


def test_plan_listeners_matches_by_address_and_binds_the_rest() -> None:
    unix = Listener("unix", path="/run/ingest/ingest.sock")
    udp_by_name = Listener("udp", host="localhost", port=5140)
    udp_other = Listener("udp", host="127.0.0.1", port=5141)
    passed_unix = _passed(Listener("unix", path="/run/ingest//ingest.sock"))
    passed_udp = _passed(Listener("udp", host="127.0.0.1", port=5140))
    try:
        plan = systemd.plan_listeners(
            [unix, udp_by_name, udp_other], False, [passed_udp, passed_unix]
        )
        assert plan == [
            (unix, passed_unix.sock),
            (udp_by_name, passed_udp.sock),
            (udp_other, None),
        ]
        # Nothing configured: the passed sockets are the listeners.
        plan = systemd.plan_listeners([udp_other], True, [passed_unix, passed_udp])
        assert plan == [
            (passed_unix.listener, passed_unix.sock),
            (passed_udp.listener, passed_udp.sock),
        ]
        # Configured, but systemd passed something else: a startup error.
        with pytest.raises(ConfigError, match=r"^--udp: systemd passed udp:127\.0\.0\.1:5140"):
            systemd.plan_listeners([unix, udp_other], False, [passed_unix, passed_udp])
        with pytest.raises(ConfigError, match=r"^--unix: "):
            systemd.plan_listeners([udp_by_name], False, [passed_unix])
        # No sockets passed: bind everything.
        assert systemd.plan_listeners([unix], False, []) == [(unix, None)]
    finally:
        passed_unix.sock.close()
        passed_udp.sock.close()


# ------------------------------------------------------- Notifier, in-process


def test_notifier_sends_each_message_as_one_datagram(sockdir: Path) -> None:
    listener = NotifyListener(sockdir / "notify")
    notifier = systemd.Notifier(str(listener.path), watchdog_usec=2_000_000)
    try:
        assert notifier.enabled
        assert notifier.watchdog_interval_s == 2.0
        assert notifier.ready()
        assert notifier.status("in 5 events/s\nsecond line")
        assert notifier.watchdog()
        assert notifier.stopping()
        listener.collect(0.2)
        assert [text for _, text in listener.messages] == [
            "READY=1",
            "STATUS=in 5 events/s second line",
            "WATCHDOG=1",
            "STOPPING=1",
        ]
        assert notifier.sent == 4
    finally:
        notifier.close()
        listener.close()


def test_notifier_abstract_address() -> None:
    name = f"ingest-notify-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(5)
    notifier = systemd.Notifier("@" + name)
    try:
        assert notifier.ready()
        assert receiver.recv(100) == b"READY=1"
    finally:
        notifier.close()
        receiver.close()


def test_notifier_never_blocks_on_a_full_or_missing_reader(sockdir: Path) -> None:
    listener = NotifyListener(sockdir / "full")  # bound, never read
    notifier = systemd.Notifier(str(listener.path))
    gone = systemd.Notifier(str(sockdir / "nobody"))
    try:
        results = [notifier.watchdog() for _ in range(2000)]  # a blocking send would hang here
        assert results[0] is True
        assert results[-1] is False  # the reader's queue filled up
        assert notifier.dropped == results.count(False) > 0
        assert notifier.sent == results.count(True)
        assert gone.ready() is False
        assert gone.dropped == 1
    finally:
        notifier.close()
        gone.close()
        listener.close()


def test_notifier_from_environ() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = systemd.Notifier.from_environ(env)
    assert env == {}  # read once, not inherited
    assert notifier.enabled and notifier.watchdog_interval_s == 1.0
    notifier.close()
    # The watchdog of another process (WATCHDOG_PID) is not ours to feed.
    other = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = systemd.Notifier.from_environ(other)
    assert notifier.enabled and notifier.watchdog_interval_s is None
    notifier.close()
    # Nowhere to send: disabled, no watchdog.
    notifier = systemd.Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    assert notifier.ready() is False


def test_rate_status_line() -> None:
    status = systemd.RateStatus()
    assert status.line(10.0, 100, 90, 5) == "in 0 events/s, out 0 events/s, queue 5 events"
    assert status.line(12.0, 300, 290, 0) == "in 100 events/s, out 100 events/s, queue 0 events"


# ------------------------------------------------- socket activation, for real


def socket_activate_cmd(*listen: str) -> list[str]:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (package systemd)")
    cmd = [tool, "--datagram"]
    for address in listen:
        cmd += ["-l", address]
    return [*cmd, "-E", "PUBSUB_EMULATOR_HOST"]


def start_activated(daemons: Daemons, args: list[str], path: Path, *more: str) -> DaemonProcess:
    """``ingest serve ARGS`` under systemd-socket-activate, which binds the
    unix socket ``path`` and the addresses ``more``; returned once the
    socket file exists (the daemon starts on the first datagram)."""
    daemon = daemons.start(*args, wrapper=socket_activate_cmd(str(path), *more))
    wait_for(path.exists, 10, "systemd-socket-activate to create the socket file")
    return daemon


def unix_inodes(path: Path) -> list[int]:
    """Inodes of the sockets bound at ``path`` (from /proc/net/unix)."""
    out = []
    with open("/proc/net/unix") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path):
                out.append(int(fields[6]))
    return out


def socket_inodes_of(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def test_socket_activation_adopts_unix_and_udp(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    port = free_udp_port()
    daemon = start_activated(
        daemons,
        serve_args(pubsub, "--unix", str(path), "--udp", f"127.0.0.1:{port}"),
        path,
        f"127.0.0.1:{port}",
    )
    file_inode = path.stat().st_ino
    [kernel_inode] = unix_inodes(path)
    # systemd-socket-activate starts the service on the first datagram; it
    # stays queued on the passed socket and the daemon reads it.
    send_unix(path, b'{"n":0,"via":"unix"}')
    ready = daemon.wait_ready()
    assert f"unix:{path}(systemd)" in ready
    assert f"udp:127.0.0.1:{port}(systemd)" in ready
    # It serves the very socket systemd bound (one socket at the path, held
    # by the daemon) and bound no socket of its own there.
    assert unix_inodes(path) == [kernel_inode]
    assert kernel_inode in socket_inodes_of(daemon.pid)
    sent = [b'{"n":0,"via":"unix"}']
    for n in range(1, 6):
        send_unix(path, b'{"n":%d,"via":"unix"}' % n)
        send_udp(("127.0.0.1", port), b'{"n":%d,"via":"udp"}' % n)
        sent += [b'{"n":%d,"via":"unix"}' % n, b'{"n":%d,"via":"udp"}' % n]
    got = emulator.pull_until(pubsub.subscription, len(sent), timeout_s=30)
    assert sorted(got) == sorted(sent)
    assert daemon.stop() == EXIT_OK
    # systemd owns the file: not unlinked, not replaced, mode untouched.
    assert path.exists()
    assert path.stat().st_ino == file_inode


def test_socket_activation_without_configured_listeners_serves_what_is_passed(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "only.sock"
    daemon = start_activated(daemons, serve_args(pubsub), path)
    send_unix(path, b'{"first":true}')
    ready = daemon.wait_ready()
    # Only the passed socket: the defaults (127.0.0.1:5140, /run/ingest) are
    # not bound when systemd passes sockets and none is configured.
    assert ready.split(" -> ")[0] == f"ready: unix:{path}(systemd)"
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"first":true}']
    assert daemon.stop() == EXIT_OK
    assert path.exists()


def test_socket_activation_with_an_unconfigured_socket_is_a_startup_error(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    port = free_udp_port()
    daemon = start_activated(
        daemons, serve_args(pubsub, "--unix", str(path)), path, f"127.0.0.1:{port}"
    )
    send_unix(path, b"{}")
    assert daemon.wait(30) == EXIT_CONFIG
    last = daemon.log.strip().splitlines()[-1]
    assert last.startswith(f"ingest: error: --udp: systemd passed udp:127.0.0.1:{port}"), last
    assert path.exists()  # still systemd's


# ----------------------------------------------------------- sd_notify, real


def test_notify_ready_watchdog_status_and_stopping(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    listener = NotifyListener(sockdir / "notify")
    port = free_udp_port()
    try:
        daemon = daemons.start(
            *serve_args(pubsub, "--udp", f"127.0.0.1:{port}"),
            env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"},
        )
        listener.wait_for("READY=1", 30)
        # READY follows the ready: line, so the listeners are reading.
        assert "ready: " in daemon.log
        send_udp(("127.0.0.1", port), b'{"after":"ready"}')
        assert emulator.pull_until(pubsub.subscription, 1) == [b'{"after":"ready"}']
        status = listener.wait_for("STATUS=", 10)[1]
        assert re.fullmatch(
            r"STATUS=in \d+ events/s, out \d+ events/s, queue \d+ events", status
        ), status
        # WATCHDOG_USEC=1s: a ping every 0.5 s; several within a generous window.
        start = time.monotonic()
        listener.collect(3.0)
        pings = [t for t, text in listener.messages if text == "WATCHDOG=1" and t >= start]
        assert len(pings) >= 3, listener.messages
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0, gaps  # inside the watchdog interval, every time
        statuses = [t for t, text in listener.messages if text.startswith("STATUS=")]
        assert len(statuses) >= 2
        daemon.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 10)
        assert daemon.wait() == EXIT_OK
        texts = [text for _, text in listener.messages]
        assert texts.count("READY=1") == 1
        assert texts.index("READY=1") < texts.index("STOPPING=1")
    finally:
        listener.close()


def test_a_notify_socket_nobody_reads_does_not_stall_the_daemon(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    listener = NotifyListener(sockdir / "notify")  # bound, never read: it fills up
    port = free_udp_port()
    metrics_port = free_port()
    try:
        daemon = daemons.start(
            *serve_args(pubsub, "--udp", f"127.0.0.1:{port}"),
            f"--metrics=127.0.0.1:{metrics_port}",
            # A ping every 50 ms fills a queue of max_dgram_qlen (10) quickly.
            env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"},
        )
        daemon.wait_ready()
        daemon.wait_for_log("systemd notification to .* not sent", 20)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("ingest_sd_notify_")
        }
        assert counts["ingest_sd_notify_sent_total"] >= 1  # READY=1 at least
        assert counts["ingest_sd_notify_dropped_total"] >= 1  # the drops are visible
        sent = [b'{"n":%d}' % n for n in range(50)]
        for payload in sent:
            send_udp(("127.0.0.1", port), payload)
        got = emulator.pull_until(pubsub.subscription, len(sent), timeout_s=30)
        assert sorted(got) == sorted(sent)
        assert daemon.stop() == EXIT_OK
    finally:
        listener.close()
