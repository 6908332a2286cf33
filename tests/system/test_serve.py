"""``ingest serve`` end to end: a real subprocess, real sockets, the real emulator.

Delivery is verified by pulling the test's own subscription; absence is
proven after a clean stop (exit 0 means everything accepted was published)
by pulling until the subscription stays quiet.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    PubSubNames,
    UnixSender,
    closed_tcp_port,
    free_udp_port,
    ipv6_loopback_available,
    send_udp,
    send_unix,
    serve_args,
    stale_socket_file,
    subject_to_file_modes,
    udp_addr,
)
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import Emulator

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DRAIN_INCOMPLETE = 3


def pull_all_after_stop(emulator: Emulator, names: PubSubNames) -> list[bytes]:
    """Everything on the subscription, once the daemon has exited 0."""
    return emulator.pull_quiet(names.subscription, quiet_s=0.5, timeout_s=30)


def assert_startup_error(code: int, stderr: str, *needles: str) -> None:
    """Exit 2 with exactly one line on stderr naming the problem, no traceback."""
    assert code == EXIT_CONFIG, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ingest: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], stderr


# ----------------------------------------------------------------- delivery


def test_exact_bytes_over_unix_udp4_and_udp6(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback (::1) on this host")
    path = sockdir / "in.sock"
    port4 = free_udp_port("127.0.0.1")
    port6 = free_udp_port("::1")
    daemon = daemons.start(
        *serve_args(
            pubsub,
            "--unix",
            str(path),
            "--udp",
            udp_addr("127.0.0.1", port4),
            "--udp",
            udp_addr("::1", port6),
        )
    )
    ready = daemon.wait_ready()
    for label in (f"unix:{path}", f"udp:127.0.0.1:{port4}", f"udp:[::1]:{port6}"):
        assert label in ready
    assert pubsub.topic in ready

    def payloads(via: str) -> list[bytes]:
        return [
            f'{{"via":"{via}","msg":"héllo — 世界 🎉"}}'.encode(),
            f'{{ "via" : "{via}" ,\t"list" : [ 1 , 2.50 , 1e3 ] , "o" : {{ }} }}'.encode(),
            f'   {{"via":"{via}","pad":"leading and trailing spaces"}}   '.encode(),
            f'{{"via":"{via}","esc":"\\u00e9\\n\\"q\\""}}'.encode(),
            f'\t{{"via":"{via}","dup":1,"dup":2}}\r'.encode(),
        ]

    sent: list[bytes] = []
    for payload in payloads("unix"):
        send_unix(path, payload)
        sent.append(payload)
    for payload in payloads("udp4"):
        send_udp(("127.0.0.1", port4), payload)
        sent.append(payload)
    for payload in payloads("udp6"):
        send_udp(("::1", port6), payload)
        sent.append(payload)

    got = emulator.pull_until(pubsub.subscription, len(sent), timeout_s=30)
    assert Counter(got) == Counter(sent)
    assert daemon.stop() == EXIT_OK
    assert pull_all_after_stop(emulator, pubsub) == []  # no duplicates, nothing extra
    assert daemon.stopped_counts()["published"] == len(sent)


def serving_unix_and_udp(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path, *extra: str
) -> tuple[DaemonProcess, Path, int]:
    """A ready daemon on sockdir/in.sock and a free UDP port on 127.0.0.1
    (``extra``: more flags): the daemon, the socket's path, the port."""
    path = sockdir / "in.sock"
    port = free_udp_port()
    daemon = daemons.start(
        *serve_args(pubsub, "--unix", str(path), "--udp", udp_addr("127.0.0.1", port), *extra)
    )
    daemon.wait_ready()
    return daemon, path, port


def test_ndjson_datagrams(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    daemon, path, port = serving_unix_and_udp(daemons, pubsub, sockdir)
    # Several objects per datagram.
    send_unix(path, b'{"n":1}\n{"n":2}\n{"n":3}')
    # Blank lines (empty, spaces, tabs, a trailing newline) are ignored.
    send_unix(path, b'\n\n{"n":4}\n   \n\t\n{"n":5}\n')
    # Bad lines do not spoil the good ones of the same datagram; each good
    # line is forwarded as its own bytes, spaces included.
    send_udp(
        ("127.0.0.1", port),
        b'{"n":6}\n{bad\n[1,2]\n{"n":7}\n\xff\xfe\n  {"n": 8}  \n"str"',
    )
    expected = [
        b'{"n":1}',
        b'{"n":2}',
        b'{"n":3}',
        b'{"n":4}',
        b'{"n":5}',
        b'{"n":6}',
        b'{"n":7}',
        b'  {"n": 8}  ',
    ]
    got = emulator.pull_until(pubsub.subscription, len(expected))
    assert Counter(got) == Counter(expected)
    assert daemon.stop() == EXIT_OK
    assert pull_all_after_stop(emulator, pubsub) == []
    counts = daemon.stopped_counts()
    # Events are non-blank lines: 3 + 2 + 7.
    assert counts["received"] == 12
    assert counts["published"] == 8
    assert counts["rejected"] == 4


def test_invalid_and_oversized_input_is_never_forwarded(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    max_bytes = 64
    daemon, path, port = serving_unix_and_udp(
        daemons, pubsub, sockdir, "--max-datagram-bytes", str(max_bytes)
    )
    exactly_max = b'{"edge":"' + b"x" * (max_bytes - 11) + b'"}'
    assert len(exactly_max) == max_bytes
    one_over = b'{"edge":"' + b"y" * (max_bytes - 10) + b'"}'
    assert len(one_over) == max_bytes + 1
    invalid = [
        b'{"a":',  # invalid JSON
        b"{'a': 1}",
        b'{"a":1}}',
        b"[1]",  # not an object
        b'"str"',
        b"42",
        b"null",
        b'{"a":"\xff"}',  # invalid UTF-8
        b"\xc3\x28",
        one_over,  # oversized: one byte too many, valid JSON otherwise
        b'{"big":"' + b"z" * 500 + b'"}',
        # Oversized NDJSON whose every line is valid: rejected whole, never
        # forwarded in part.
        b"\n".join([b'{"part":%d}' % i for i in range(20)]),
    ]
    for payload in invalid:
        send_unix(path, payload)
        send_udp(("127.0.0.1", port), payload)
    # An empty datagram is input, not end-of-file: what follows still arrives.
    valid = [exactly_max]
    send_unix(path, exactly_max)
    for via in ("unix", "udp"):
        for i in range(3):
            event = b'{"after_empty":"%s","i":%d}' % (via.encode(), i)
            valid.append(event)
            if via == "unix":
                if i == 0:
                    send_unix(path, b"")
                send_unix(path, event)
            else:
                if i == 0:
                    send_udp(("127.0.0.1", port), b"")
                send_udp(("127.0.0.1", port), event)

    got = emulator.pull_until(pubsub.subscription, len(valid))
    assert Counter(got) == Counter(valid)
    # Rejects are summarised (one line per 10 s at most), never logged one by one.
    # (A housekeeping tick may fall amid the sends and split them over two lines.)
    summary = daemon.wait_for_log(r"rejected (\d+) events so far: (.*)")
    assert 0 < int(summary.group(1)) <= 2 * len(invalid)
    assert "=" in summary.group(2)
    assert daemon.stop() == EXIT_OK
    assert pull_all_after_stop(emulator, pubsub) == []
    assert 1 <= daemon.log.count("rejected ") <= 2  # not one line per bad datagram
    counts = daemon.stopped_counts()
    assert counts["rejected"] == 2 * len(invalid)
    assert counts["published"] == len(valid)
    assert counts["received"] == 2 * len(invalid) + len(valid)


def test_sigterm_drains_everything_accepted(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    batch = 1000
    count = 20 * batch + batch // 2
    drain_timeout_s = 5
    path = sockdir / "in.sock"
    daemon = daemons.start(
        *serve_args(pubsub, "--unix", str(path), "--queue-max-events", str(2 * count)),
        "--batch-max-messages",
        str(batch),
        # Batches close on count; the last, partial one would linger longer
        # than the drain deadline, so SIGTERM must end its wait (not the clock).
        "--batch-linger-ms",
        "10000",
        "--drain-timeout",
        str(drain_timeout_s),
    )
    daemon.wait_ready()
    with UnixSender(path) as sender:  # blocking: waits instead of EAGAIN
        for i in range(count):
            sender.send(b'{"seq":%d}' % i)
    daemon.terminate()  # at once: some is still in the kernel, queued or in flight
    assert daemon.wait(drain_timeout_s + 10) == EXIT_OK, daemon.log
    draining = daemon.wait_for_log(r"draining (\d+) queued and (\d+) in-flight")
    # At least the partial batch was still unpublished when SIGTERM came.
    assert int(draining[1]) + int(draining[2]) >= count % batch
    counts = daemon.stopped_counts()
    assert counts == {
        "received": count,
        "published": count,
        "rejected": 0,
        "dropped": 0,
        "shutdown": 0,
        "spooled": 0,
        "unconfirmed": 0,
    }
    assert not path.exists(), "the unix socket file must be removed at stop"
    got = emulator.pull_until(pubsub.subscription, count, timeout_s=60)
    assert len(got) == count
    assert {int(m[len(b'{"seq":') : -1]) for m in got} == set(range(count))


def test_stale_socket_file_is_replaced_and_removed_at_stop(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    stale_socket_file(path)
    daemon = daemons.start(*serve_args(pubsub, "--unix", str(path)))
    daemon.wait_ready()
    assert "removed stale socket file" in daemon.log
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660  # the documented default
    send_unix(path, b'{"through":"replaced socket"}')
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"through":"replaced socket"}']
    assert daemon.stop() == EXIT_OK
    assert not path.exists()


@pytest.mark.parametrize("credentials", [False, True], ids=["plain", "credentials"])
def test_removed_socket_file_is_recreated_while_running(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, credentials: bool
) -> None:
    """The fresh socket is read the way the old one was: with
    --unix-credentials, each event still carries its sender."""
    path = sockdir / "in.sock"
    extra = ["--unix-credentials"] if credentials else []
    daemon = daemons.start(*serve_args(pubsub, "--unix", str(path), *extra))
    daemon.wait_ready()
    path.unlink()  # a tmpfiles clean-up or a stray rm
    daemon.wait_for_log("socket file re-created", timeout_s=10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    send_unix(path, b'{"after":"re-creation"}')
    [message] = emulator.pull_messages_until(pubsub.subscription, 1)
    assert message.data == b'{"after":"re-creation"}'
    if credentials:
        assert message.attributes["sender_pid"] == str(os.getpid())
        assert message.attributes["sender_uid"] == str(os.getuid())
    assert daemon.stop() == EXIT_OK
    assert not path.exists()


def test_a_socket_file_that_cannot_be_recreated_is_reported_once_per_interval(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    """Replaced by a regular file, the socket cannot be re-created: the
    problem shows in the log, rate-limited like every repeating warning,
    rather than two lines every housekeeping second."""
    path = sockdir / "in.sock"
    daemon = daemons.start(*serve_args(pubsub, "--unix", str(path)))
    daemon.wait_ready()
    path.unlink()
    path.write_text("not a socket")
    daemon.wait_for_log("cannot re-create", timeout_s=10)
    # A negative claim needs time to pass: several housekeeping seconds.
    time.sleep(3.5)
    assert daemon.log.count("socket file disappeared or was replaced") == 1, daemon.log
    assert daemon.log.count("cannot re-create") == 1, daemon.log
    path.unlink()
    daemon.wait_for_log("socket file re-created", timeout_s=10)
    assert daemon.stop() == EXIT_OK


def test_failed_startup_removes_the_sockets_it_bound(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    bound = sockdir / "first.sock"
    missing = sockdir / "missing" / "second.sock"
    code, stderr = daemons.run_failing(
        *serve_args(pubsub, "--unix", str(bound), "--unix", str(missing))
    )
    assert_startup_error(code, stderr, "--unix", str(missing))
    assert not bound.exists()


def test_socket_in_use_is_a_startup_error(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as owner:
        owner.bind(str(path))
        code, stderr = daemons.run_failing(*serve_args(pubsub, "--unix", str(path)))
        assert_startup_error(code, stderr, "--unix", str(path), "in use")
        # The other process's socket is left alone.
        send_unix(path, b"still mine")
        assert owner.recv(100) == b"still mine"


def test_regular_file_at_socket_path_is_a_startup_error(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    path.write_text("precious")
    code, stderr = daemons.run_failing(*serve_args(pubsub, "--unix", str(path)))
    assert_startup_error(code, stderr, "--unix", str(path), "not a socket")
    assert path.read_text() == "precious"


# ---------------------------------------------------------------- lifecycle


def test_sighup_reloads_and_does_not_stop_it(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """With flags only, a reload finds nothing changed (test_reload.py has
    the rest)."""
    path = sockdir / "in.sock"
    daemon = daemons.start(*serve_args(pubsub, "--unix", str(path)))
    daemon.wait_ready()
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded: nothing changed")
    assert daemon.running()
    send_unix(path, b'{"after":"SIGHUP"}')
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"after":"SIGHUP"}']
    assert daemon.running()
    assert daemon.stop() == EXIT_OK


def test_pubsub_unreachable_at_startup_is_not_an_error(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    daemon = daemons.start(
        *serve_args(pubsub, "--unix", str(path), "--drain-timeout", "0.5"),
        emulator_host=f"127.0.0.1:{closed_tcp_port()}",
    )
    daemon.wait_ready()
    assert "not usable at startup" in daemon.log
    assert daemon.running()
    # It accepts events meanwhile; they wait for Pub/Sub.
    send_unix(path, b'{"kept":true}')
    daemon.wait_for_log("publish failed with UNAVAILABLE")
    assert daemon.running()
    # Stopped while Pub/Sub is still down: the documented "drain incomplete" code.
    assert daemon.stop() == EXIT_DRAIN_INCOMPLETE
    assert daemon.stopped_counts() == {
        "received": 1,
        "published": 0,
        "rejected": 0,
        "dropped": 1,
        "shutdown": 1,
        "spooled": 0,
        "unconfirmed": 0,  # it never reached Pub/Sub: dropped, not unconfirmed
    }


def test_second_sigint_stops_at_once(daemons: Daemons, pubsub: PubSubNames, sockdir: Path) -> None:
    path = sockdir / "in.sock"
    daemon = daemons.start(
        *serve_args(pubsub, "--unix", str(path), "--drain-timeout", "600"),
        emulator_host=f"127.0.0.1:{closed_tcp_port()}",
    )
    daemon.wait_ready()
    send_unix(path, b'{"stuck":true}')
    daemon.wait_for_log("publish failed with UNAVAILABLE")
    daemon.send_signal(signal.SIGINT)
    daemon.wait_for_log("stopping: draining")
    assert daemon.running()  # the drain waits for Pub/Sub
    daemon.send_signal(signal.SIGINT)
    assert daemon.wait(10) == 130  # far inside the 600 s drain deadline
    assert daemon.stopped_counts()["dropped"] == 1
    assert not path.exists()


# ----------------------------------------------------------- startup errors


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--queue-max-events", "abc"], "--queue-max-events"),
        (["--unix-mode", "999"], "--unix-mode"),
        (["--udp", "127.0.0.1"], "--udp"),
        (["--unix", "relative.sock"], "--unix"),
    ],
)
def test_bad_config_value_exits_2_naming_the_flag(
    offline_daemons: Daemons, extra: list[str], flag: str
) -> None:
    code, stderr = offline_daemons.run_failing(
        "--project", "p", "--topic", "topic", "--metrics", "", *extra
    )
    assert_startup_error(code, stderr, flag)


def test_missing_required_setting_names_flag_and_env(offline_daemons: Daemons) -> None:
    code, stderr = offline_daemons.run_failing("--project", "p", "--unix", "/tmp/x.sock")
    assert_startup_error(code, stderr, "--topic", "INGEST_TOPIC")


def test_udp_address_in_use(daemons: Daemons, pubsub: PubSubNames) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, stderr = daemons.run_failing(*serve_args(pubsub, "--udp", f"127.0.0.1:{port}"))
    assert_startup_error(code, stderr, "--udp", f"127.0.0.1:{port}", "in use")


def test_socket_directory_missing(daemons: Daemons, pubsub: PubSubNames, sockdir: Path) -> None:
    path = sockdir / "missing" / "in.sock"
    code, stderr = daemons.run_failing(*serve_args(pubsub, "--unix", str(path)))
    assert_startup_error(code, stderr, "--unix", "does not exist")


def test_socket_directory_not_writable(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    directory = sockdir / "read-only"
    directory.mkdir(mode=0o555)
    # As a packaged service running as its own user would be.
    wrapper = subject_to_file_modes()
    path = directory / "in.sock"
    code, stderr = daemons.run_failing(*serve_args(pubsub, "--unix", str(path)), wrapper=wrapper)
    assert_startup_error(code, stderr, "--unix", str(directory), "not writable")
    assert not path.exists()


def test_missing_topic_needs_create_topic(
    daemons: Daemons, emulator: Emulator, sockdir: Path
) -> None:
    names = PubSubNames(
        "ingest-test",
        f"absent-{uuid.uuid4().hex[:12]}",
        "",
        "",
    )
    topic = f"projects/{names.project}/topics/{names.topic_id}"
    path = sockdir / "in.sock"
    code, stderr = daemons.run_failing(*serve_args(names, "--unix", str(path)))
    assert_startup_error(code, stderr, "--topic", topic, "--create-topic")
    assert not path.exists(), "startup checks run before any socket is bound"

    daemon = daemons.start(*serve_args(names, "--unix", str(path), "--create-topic"))
    daemon.wait_ready()
    assert f"created topic {topic}" in daemon.log
    emulator.get_topic(topic)  # raises NOT_FOUND if it was not created
    subscription = f"projects/{names.project}/subscriptions/for-{names.topic_id}"
    emulator.create_subscription(subscription, topic)
    send_unix(path, b'{"to":"created topic"}')
    assert emulator.pull_until(subscription, 1) == [b'{"to":"created topic"}']
    assert daemon.stop() == EXIT_OK


# --------------------------------------------------------------- accounting


def test_accounting_adds_up_after_a_mixed_load(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    daemon, path, port = serving_unix_and_udp(
        daemons, pubsub, sockdir, "--max-datagram-bytes", "1500", "--queue-max-bytes", "1024"
    )
    to_udp = ("127.0.0.1", port)
    for i in range(5):
        send_unix(path, b'{"u":%d}' % i)
    for i in range(3):
        send_udp(to_udp, b'{"d":%d}' % i)
    send_unix(path, b'{"nd":1}\n\n[1]\n{"nd":2}\nnope\n')  # 4 events: 2 good, 2 bad
    send_unix(path, b"{")
    send_udp(to_udp, b"{")
    send_unix(path, b'"s"')
    send_unix(path, b"\xff")
    send_unix(path, b"")  # no event
    send_udp(to_udp, b"  \n \n")  # blank lines only: no event
    send_unix(path, b'{"p":"' + b"x" * 2000 + b'"}')  # oversized: 1 event, rejected whole
    valid = 5 + 3 + 2
    assert len(emulator.pull_until(pubsub.subscription, valid)) == valid
    # Now the queue is empty: of two 600-byte events, only the first fits the
    # 1024-byte queue; the second is dropped (queue_full).
    big = [b'{"big":%d,"pad":"%s"}' % (i, b"q" * 580) for i in range(2)]
    send_unix(path, b"\n".join(big))
    assert daemon.stop() == EXIT_OK
    assert pull_all_after_stop(emulator, pubsub) == [big[0]]

    counts = daemon.stopped_counts()
    # valid singles, the NDJSON datagram, "{" twice, "s", \xff, oversized, big.
    assert counts["received"] == 5 + 3 + 4 + 2 + 1 + 1 + 1 + 2
    assert counts["published"] == valid + 1
    assert counts["rejected"] == 2 + 2 + 1 + 1 + 1
    assert counts["dropped"] == 1
    assert counts["shutdown"] == 0
    assert counts["received"] == counts["published"] + counts["rejected"] + counts["dropped"]


# ------------------------------------------------------------ configuration


def test_config_precedence_end_to_end(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    config = sockdir / "ingest.toml"
    config.write_text(
        f'project = "from-file"\n'
        f'topic = "{pubsub.topic_id}"\n'
        f"publishers = 2\n"
        f'unix_mode = "0600"\n'
        f'unix = ["{path}"]\n'
        f"batch_linger_ms = 1\n"
        f'metrics = ""\n'
    )
    env = {
        "INGEST_PROJECT": pubsub.project,  # env beats file
        "INGEST_PUBLISHERS": "3",
        "INGEST_UNIX_MODE": "0640",  # env beats file
        "INGEST_NO_SUCH_SETTING": "1",  # unknown: a warning, not an error
    }
    daemon = daemons.start("--config", str(config), "--publishers", "5", env=env)
    ready = daemon.wait_ready()
    assert "ignoring unknown environment variable INGEST_NO_SUCH_SETTING" in daemon.log
    assert pubsub.topic in ready  # project from env, topic from file
    assert "publishers=5" in ready  # flag beats env and file
    # The file's listener replaces the defaults (no default UDP or unix path).
    assert ready.split(" -> ")[0] == f"ready: unix:{path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    send_unix(path, b'{"configured":"by file, env and flag"}')
    assert emulator.pull_until(pubsub.subscription, 1) == [
        b'{"configured":"by file, env and flag"}'
    ]
    assert daemon.stop() == EXIT_OK


def test_unknown_key_in_config_file_is_a_startup_error(
    offline_daemons: Daemons, tmp_path: Path
) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('project = "p"\ntopic = "topic"\nqueue_size = 10\n')
    code, stderr = offline_daemons.run_failing("--config", str(config))
    assert_startup_error(code, stderr, "--config", "queue_size")


def test_config_file_value_error_names_flag_and_key(
    offline_daemons: Daemons, tmp_path: Path
) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('project = "p"\ntopic = "topic"\npublishers = 0\n')
    code, stderr = offline_daemons.run_failing("--config", str(config))
    assert_startup_error(code, stderr, "--publishers", "config key publishers")


def test_udp_port_zero_is_reported_as_the_bound_port(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames
) -> None:
    """``--udp HOST:0`` lets the kernel choose; the ready line names the port
    it chose, so a sender can use it."""
    daemon = daemons.start(*serve_args(pubsub, "--udp", "127.0.0.1:0"))
    port = int(daemon.wait_for_log(r"ready: udp:127\.0\.0\.1:(\d+) ").group(1))
    assert port != 0
    send_udp(("127.0.0.1", port), b'{"chosen":true}')
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"chosen":true}']
    assert daemon.stop() == EXIT_OK
