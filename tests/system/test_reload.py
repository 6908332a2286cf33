"""Live reload (SIGHUP): what a running daemon takes over and what waits for
a restart (reload.plan, pure), and a daemon reloaded under steady load: no
event lost or duplicated, new attributes on later events, a listener added
and one removed, a broken file refused while the old configuration runs on."""

from __future__ import annotations

import dataclasses
import grp
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st

from ingest import reloader as reloader_module
from ingest.config import (
    SERVE_OPTIONS,
    ConfigError,
    Listener,
    Settings,
    build_settings,
    check_attribute_keys,
)
from ingest.pipeline.queue import EventQueue
from ingest.receive.sockets import bind_unix
from ingest.receive.sources import DatagramSource
from ingest.reload import DEPENDENCIES, LIVE, METADATA, RESTART_ONLY, STARTUP_FIXED, plan
from ingest.stats import Stats
from tests.helpers import PubSubNames, UnixSender, wait_for
from tests.scrape import scrape, unaccounted, value
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import Emulator, free_port


def settings(**values: Any) -> Settings:
    return build_settings({"project": "p", "topic": "events", **values}, {})


# --- the plan --------------------------------------------------------------------


def test_live_settings_are_applied_and_restart_only_ones_kept_and_named() -> None:
    old = settings(unix=["/run/a.sock"], attributes=["v=1"], publishers="4")
    new = settings(
        unix=["/run/a.sock", "/run/b.sock"],
        attributes=["v=2"],
        publishers="8",
        project="other",
        queue_max_events="500",
        log_level="debug",
    )
    planned = plan(old, new, ("events",))
    assert planned.settings.publishers == 4 and planned.settings.project == "p"
    assert planned.kept == ["--project (needs a restart)", "--publishers (needs a restart)"]
    assert planned.settings.attributes == (("v", "2"),)
    assert planned.settings.queue_max_events == 500
    assert [item.label for item in planned.settings.listeners] == [
        "unix:/run/a.sock",
        "unix:/run/b.sock",
    ]
    assert set(planned.changed) == {"attributes", "queue_max_events", "log_level", "listeners"}


def test_switching_between_plain_and_metadata_waits_for_a_restart() -> None:
    old = settings(unix=["/run/a.sock"])
    planned = plan(old, settings(unix=["/run/a.sock"], attributes=["v=1"]), ("events",))
    assert planned.settings.attributes == ()
    assert planned.kept == [
        "--attribute, --attribute-field, --ordering-key-field, --route (depends on the "
        "message form chosen at startup, plain or metadata: switching between plain and "
        "metadata messages)"
    ]
    assert planned.changed == []


def test_a_route_to_a_new_topic_waits_for_a_restart_with_the_rest_of_the_metadata() -> None:
    old = settings(unix=["/run/a.sock"], routes=["errors:level=error"])
    new = settings(unix=["/run/a.sock"], routes=["audit:kind=audit"], attributes=["v=1"])
    planned = plan(old, new, ("events", "errors"))
    assert planned.settings.routes == old.routes and planned.settings.attributes == ()
    assert planned.kept == [
        "--attribute, --attribute-field, --ordering-key-field, --route (depends on the "
        "topics published to since startup: no route may add one: audit)"
    ]
    routed = plan(old, settings(unix=["/run/a.sock"], routes=["errors:level=fatal"]), old.topics)
    assert routed.kept == [] and routed.changed == ["routes"]


def test_listeners_from_systemd_or_the_defaults_stay() -> None:
    old = settings()  # no listener given: the defaults (or what systemd passes)
    planned = plan(old, settings(unix=["/run/b.sock"]), ("events",))
    assert planned.settings.listeners == old.listeners
    assert planned.kept == [
        "--udp/--unix (depends on the listeners systemd passed, or the defaults: which "
        "sockets exist is ingest.socket's to say)"
    ]


# --- settings that depend on restart-only ones ------------------------------------------


def test_every_setting_is_restart_only_dependent_or_live_and_nothing_twice() -> None:
    """A setting added to Settings fails here until someone decides which it is."""
    dependent = [name for dependency in DEPENDENCIES for name in dependency.settings]
    fields = {item.name for item in dataclasses.fields(Settings)}
    assert set(RESTART_ONLY) | set(dependent) | set(LIVE) == fields
    assert not set(RESTART_ONLY) & (set(dependent) | set(LIVE))
    assert not set(dependent) & set(LIVE)
    for dependency in DEPENDENCIES:
        assert dependency.needs in RESTART_ONLY or dependency.needs in STARTUP_FIXED


ALL_FORMATS = "json,gelf,syslog,statsd"


@dataclass(frozen=True)
class Case:
    """One DEPENDENCIES entry: ``new`` over ``running`` (publishing to its
    topics) leaves ``held`` as it runs, named in a line with ``needs`` (a
    flag or a STARTUP_FIXED text); over ``allowing`` (the dependency
    holds) it is applied."""

    running: dict[str, Any]
    new: dict[str, Any]
    allowing: dict[str, Any]
    held: tuple[str, ...]
    needs: str


UNIX = {"unix": ["/run/a.sock"]}
ATTRIBUTES_97 = [f"a{n}=x" for n in range(97)]
CASES: dict[tuple[str, str], Case] = {
    ("listeners", "default_listeners"): Case(
        running={},  # the defaults stand in (or systemd's sockets)
        new={"unix": ["/run/b.sock"]},
        allowing=UNIX,
        held=("listeners",),
        needs=STARTUP_FIXED["default_listeners"],
    ),
    # The reported case: the allow-list without credentials would check nothing.
    ("unix_allow_uids", "unix_credentials"): Case(
        running=UNIX,
        new={**UNIX, "unix_allow_uids": ["4242"]},
        allowing={**UNIX, "unix_credentials": "true"},
        held=("unix_allow_uids",),
        needs="--unix-credentials",
    ),
    ("attributes", "metadata"): Case(
        running=UNIX,
        new={**UNIX, "attributes": ["v=1"]},
        allowing={**UNIX, "attributes": ["v=0"]},
        held=METADATA,
        needs=STARTUP_FIXED["metadata"],
    ),
    ("attributes", "topics"): Case(
        running={**UNIX, "routes": ["errors:level=error"]},
        new={**UNIX, "routes": ["audit:kind=audit"]},
        allowing={**UNIX, "routes": ["audit:level=error"]},
        held=METADATA,
        needs=STARTUP_FIXED["topics"],
    ),
    # Kept on, --unix-credentials sets sender_pid itself.
    ("attributes", "unix_credentials"): Case(
        running={**UNIX, "unix_credentials": "true"},
        new={**UNIX, "attributes": ["sender_pid=1"]},
        allowing={**UNIX, "attributes": ["v=0"]},
        held=METADATA,
        needs="--unix-credentials",
    ),
    # Kept on, its 3 attributes and syslog's 6 would make 103 with 94 of the
    # file's, and 106 with the 97 that run: Pub/Sub takes 100.
    ("input_formats", "unix_credentials"): Case(
        running={
            **UNIX,
            "unix_credentials": "true",
            "input_formats": "json",
            "attributes": ATTRIBUTES_97,
        },
        new={**UNIX, "input_formats": ALL_FORMATS, "attributes": ATTRIBUTES_97[:94]},
        allowing={**UNIX, "input_formats": "json", "attributes": ATTRIBUTES_97},
        held=("input_formats",),
        needs="--unix-credentials",
    ),
}


def test_every_dependency_has_a_case() -> None:
    assert set(CASES) == {(dep.settings[0], dep.needs) for dep in DEPENDENCIES}


@pytest.mark.parametrize("key", list(CASES), ids=["/".join(key) for key in CASES])
def test_a_setting_that_depends_on_a_restart_only_one_is_named_not_applied(
    key: tuple[str, str],
) -> None:
    case = CASES[key]
    running, new = settings(**case.running), settings(**case.new)
    planned = plan(running, new, running.topics)
    for name in case.held:
        assert getattr(planned.settings, name) == getattr(running, name), name
        assert name not in planned.changed
    dependency = next(dep for dep in DEPENDENCIES if (dep.settings[0], dep.needs) == key)
    lines = [line for line in planned.kept if "(needs a restart)" not in line]
    flags = [_flag_of(name) for name in dependency.settings if name != "default_listeners"]
    assert any(all(flag in line for flag in flags) for line in lines), planned.kept
    assert any(f"depends on {case.needs}" in line for line in lines), planned.kept
    # Where the running daemon allows it, the same file is applied.
    allowing = settings(**case.allowing)
    allowed = plan(allowing, new, allowing.topics)
    assert all(case.needs not in line for line in allowed.kept), allowed.kept
    for name in case.held:
        assert getattr(allowed.settings, name) == getattr(new, name), name


def _flag_of(name: str) -> str:
    if name == "listeners":
        return "--udp/--unix"
    return next(option.flag for option in SERVE_OPTIONS if option.key == name)


# Values that interact: credentials and what implies them, the attributes the
# sender's and syslog's may clash with or count against, routes to topics
# published to or not, the listeners' origin.
POOL: dict[str, list[Any]] = {
    "unix": [None, ["/run/a.sock"], ["/run/a.sock", "/run/b.sock"]],
    "unix_credentials": [None, "true"],
    "unix_allow_uids": [None, ["4242"], ["0", "4242"]],
    "attributes": [None, ["v=1"], ["sender_uid=me"], ATTRIBUTES_97[:94], ATTRIBUTES_97],
    "attribute_fields": [None, ["sender_gid=gid"], ["level=level"]],
    "ordering_key_field": [None, "user"],
    "routes": [None, ["errors:level=error"], ["audit:kind=audit"]],
    "input_formats": [None, "json", ALL_FORMATS],
    "queue_max_events": [None, "500"],
}


def _valid(values: dict[str, Any]) -> Settings | None:
    try:
        return settings(**{key: value for key, value in values.items() if value is not None})
    except ConfigError:
        return None


@given(
    running=st.fixed_dictionaries({key: st.sampled_from(pool) for key, pool in POOL.items()}),
    new=st.fixed_dictionaries({key: st.sampled_from(pool) for key, pool in POOL.items()}),
)
@settings_hypothesis(max_examples=300, deadline=None)
def test_what_a_reload_leaves_running_is_a_configuration_the_daemon_could_start_with(
    running: dict[str, Any], new: dict[str, Any]
) -> None:
    """Completeness, where it can be checked: whatever two valid files, what
    the plan applies keeps every rule the settings are built and started
    with, and every new value it holds back is named in a line."""
    old, fresh = _valid(running), _valid(new)
    assume(old is not None and fresh is not None)
    assert old is not None and fresh is not None
    topics = old.topics
    planned = plan(old, fresh, topics)
    result = planned.settings
    check_attribute_keys(result)  # raises ConfigError: keys clash, or too many
    assert not result.unix_allow_uids or result.unix_credentials
    assert result.metadata == old.metadata
    assert {route.topic for route in result.routes} <= set(topics)
    for name in RESTART_ONLY:
        assert getattr(result, name) == getattr(old, name)
    for item in dataclasses.fields(Settings):
        name = item.name
        if name == "default_listeners":
            continue
        if getattr(result, name) != getattr(fresh, name):  # held back: said so
            assert any(_flag_of(name) in line for line in planned.kept), (name, planned.kept)
            assert name not in planned.changed
        else:
            assert (name in planned.changed) == (getattr(old, name) != getattr(fresh, name))


# --- a daemon reloaded under load -------------------------------------------------------


class SteadySender(threading.Thread):
    """Sends numbered events to one unix socket, one after another (blocking
    sends: the kernel holds the sender when the socket's queue is full, so
    nothing is lost on the way), until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with UnixSender(self.path) as sender:
            while not self._halt.is_set():
                sender.send(b'{"seq":%d}' % self.sent)
                self.sent += 1
                self._halt.wait(0.0005)  # steady, not a flood

    def stop(self) -> int:
        self._halt.set()
        self.join(10)
        return self.sent


def test_reload_under_load_loses_nothing_and_applies_the_new_configuration(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, tmp_path: Path, sockdir: Path
) -> None:
    port = free_port()
    main, extra = sockdir / "main.sock", sockdir / "extra.sock"
    config = tmp_path / "ingest.toml"

    def write(attribute: str, unix: list[Path]) -> None:
        config.write_text(
            f'project = "{pubsub.project}"\ntopic = "{pubsub.topic_id}"\n'
            f'attribute = ["v={attribute}"]\nunix = {orjson.dumps([str(p) for p in unix]).decode()}\n'
            f'metrics = "127.0.0.1:{port}"\nbatch_linger_ms = 1\n'
        )

    write("1", [main])
    daemon = daemons.start("--config", str(config))
    daemon.wait_ready()
    base = f"http://127.0.0.1:{port}"
    sender = SteadySender(main)
    sender.start()
    wait_for(lambda: sender.sent > 300, 10, "events before the reload")

    # 1. New attribute value, a listener added.
    write("2", [main, extra])
    before_hup = sender.sent
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded: listeners, attributes")
    after_reload = sender.sent
    with UnixSender(extra) as other:
        other.send(b'{"via":"extra"}')

    # 2. A broken file: refused, the running configuration stays.
    config.write_text("project = [\n")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reload refused, still running the previous configuration: --config: ")
    wait_for(
        lambda: value(scrape(base), "ingest_config_reloads_total", result="error") == 1,
        10,
        "the refused reload counted",
    )

    # 3. The added listener removed again: its socket file goes.
    write("3", [main])
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"unix:\S+extra.sock: listener removed")
    wait_for(lambda: not extra.exists(), 10, "the removed listener's socket file gone")
    after_last = sender.sent
    wait_for(lambda: sender.sent > after_last + 300, 10, "events after the last reload")
    total = sender.stop()

    wait_for(
        lambda: (
            value(scrape(base), "ingest_events_published_total", topic=pubsub.topic_id) == total + 1
        ),
        30,
        "every event published",
    )
    samples = scrape(base)
    assert value(samples, "ingest_config_reloads_total", result="ok") == 2
    assert unaccounted(samples) == 0
    messages = emulator.pull_messages_until(pubsub.subscription, total + 1)
    by_seq: dict[int, str] = {}
    for message in messages:
        event = orjson.loads(message.data)
        if "via" in event:
            assert message.attributes["v"] in ("2",)
            continue
        assert event["seq"] not in by_seq  # no duplicate
        by_seq[event["seq"]] = message.attributes["v"]
    assert sorted(by_seq) == list(range(total))  # nothing lost
    assert all(by_seq[seq] == "1" for seq in range(before_hup))
    assert all(by_seq[seq] in ("2", "3") for seq in range(after_reload, after_last))
    assert by_seq[total - 1] == "3"
    assert daemon.stop() == 0


def test_reload_applies_the_allow_list_queue_bounds_and_log_level(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path
) -> None:
    port, udp = free_port(), free_port(socket.AF_INET, socket.SOCK_DGRAM)
    config = tmp_path / "ingest.toml"
    head = (
        f'project = "{pubsub.project}"\ntopic = "{pubsub.topic_id}"\n'
        f'udp = ["127.0.0.1:{udp}"]\nmetrics = "127.0.0.1:{port}"\n'
    )
    config.write_text(head)
    daemon = daemons.start("--config", str(config))
    daemon.wait_ready()
    base = f"http://127.0.0.1:{port}"
    config.write_text(
        head + 'udp_allow = ["10.0.0.0/8"]\nqueue_max_events = 7\nlog_level = "debug"\n'
    )
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded: queue_max_events, udp_allow, log_level")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b'{"from":"loopback"}', ("127.0.0.1", udp))
    wait_for(
        lambda: value(scrape(base), "ingest_events_rejected_total", reason="source_denied") == 1,
        10,
        "the loopback sender denied",
    )
    assert value(scrape(base), "ingest_queue_capacity_events") == 7
    daemon.wait_for_log(r"DEBUG")  # the new level is in force
    assert daemon.stop() == 0


def _serve_config(path: Path, pubsub: PubSubNames, port: int, body: str) -> None:
    path.write_text(
        f'project = "{pubsub.project}"\ntopic = "{pubsub.topic_id}"\n'
        f'metrics = "127.0.0.1:{port}"\nbatch_linger_ms = 1\n{body}'
    )


def _reloaded_unix(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path, *, head: str, added: str
) -> tuple[DaemonProcess, int]:
    """A daemon started from a file of ``head``, sent
    SIGHUP once ``added`` joins the file: the daemon, its metrics port."""
    port = free_port()
    config = tmp_path / "ingest.toml"
    _serve_config(config, pubsub, port, head)
    daemon = daemons.start("--config", str(config))
    daemon.wait_ready()
    _serve_config(config, pubsub, port, head + added)
    daemon.send_signal(signal.SIGHUP)
    return daemon, port


def test_an_allow_list_without_credentials_is_reported_not_applied_and_not_enforced(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path, sockdir: Path
) -> None:
    """The reported case: started without credentials, the file gains
    unix_allow_uid. The reload says it is not applied, and why; and indeed
    every sender still gets in (root's events are published), as logged."""
    main = sockdir / "main.sock"
    daemon, port = _reloaded_unix(
        daemons,
        pubsub,
        tmp_path,
        head=f'unix = ["{main}"]\n',
        added='unix_allow_uid = ["4242"]\nlog_level = "debug"\n',
    )
    reloaded = daemon.wait_for_log(r"reloaded: [^\n]*").group(0)
    assert reloaded == "reloaded: log_level"
    assert (
        "reload: not applied until restart: --unix-allow-uid (depends on "
        "--unix-credentials: off since startup; the allow-list checks each sender's uid, "
        "which the kernel gives only with credentials on)"
    ) in daemon.log
    with UnixSender(main) as sender:
        for n in range(20):
            sender.send(b'{"n":%d}' % n)
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: value(scrape(base), "ingest_events_published_total", topic=pubsub.topic_id) == 20,
        10,
        "root's 20 events published: no allow-list is in force",
    )
    assert value(scrape(base), "ingest_events_rejected_total", reason="sender_denied") == 0
    assert daemon.stop() == 0


def test_an_allow_list_with_credentials_on_is_applied_and_enforced(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path, sockdir: Path
) -> None:
    main = sockdir / "main.sock"
    daemon, port = _reloaded_unix(
        daemons,
        pubsub,
        tmp_path,
        head=f'unix = ["{main}"]\nunix_credentials = true\n',
        added='unix_allow_uid = ["4242"]\n',
    )
    daemon.wait_for_log(r"reloaded: unix_allow_uids\n")
    assert "not applied" not in daemon.log
    with UnixSender(main) as sender:
        for n in range(20):
            sender.send(b'{"n":%d}' % n)
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: value(scrape(base), "ingest_events_rejected_total", reason="sender_denied") == 20,
        10,
        "root's 20 datagrams denied: uid 0 is not 4242",
    )
    assert value(scrape(base), "ingest_events_published_total", topic=pubsub.topic_id) == 0
    assert daemon.stop() == 0


def test_reloaded_socket_options_are_set_on_the_sockets_already_bound(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path, sockdir: Path
) -> None:
    """``reloaded: unix_mode`` means the socket file has the new mode: a
    reload sets --unix-mode, --unix-group and --udp-rcvbuf-bytes on the
    sockets the daemon bound, not only on those it binds from then on."""
    port, udp = free_port(), free_port(socket.AF_INET, socket.SOCK_DGRAM)
    main = sockdir / "main.sock"
    config = tmp_path / "ingest.toml"
    head = f'unix = ["{main}"]\nudp = ["127.0.0.1:{udp}"]\n'
    _serve_config(config, pubsub, port, head + "udp_rcvbuf_bytes = 1048576\n")
    daemon = daemons.start("--config", str(config))
    daemon.wait_ready()
    group = grp.getgrnam("daemon").gr_gid  # a group that is not the daemon's own
    assert (stat.S_IMODE(main.stat().st_mode), main.stat().st_gid) == (0o660, os.getegid())
    _serve_config(
        config,
        pubsub,
        port,
        head + 'udp_rcvbuf_bytes = 262144\nunix_mode = "0640"\nunix_group = "daemon"\n',
    )
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded: udp_rcvbuf_bytes, unix_mode, unix_gid\n")
    assert (stat.S_IMODE(main.stat().st_mode), main.stat().st_gid) == (0o640, group)
    granted = value(
        scrape(f"http://127.0.0.1:{port}"),
        "ingest_udp_rcvbuf_bytes",
        listener=f"udp:127.0.0.1:{udp}",
    )
    assert granted == 262144  # root: SO_RCVBUFFORCE past any rmem_max
    # unix_group unset again: the group a fresh bind gets, the daemon's.
    _serve_config(config, pubsub, port, head + "udp_rcvbuf_bytes = 262144\n")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded: unix_mode, unix_gid\n")
    assert (stat.S_IMODE(main.stat().st_mode), main.stat().st_gid) == (0o660, os.getegid())
    assert daemon.stop() == 0


def test_sockets_systemd_passed_keep_their_options_and_the_log_says_so(sockdir: Path) -> None:
    """ingest.socket's SocketMode=, SocketGroup=, ReceiveBuffer= decide for
    the sockets it passes, at a reload as at startup."""
    path = sockdir / "passed.sock"
    listener = Listener("unix", path=str(path))
    old = settings(unix=[str(path)])
    new = settings(unix=[str(path)], unix_mode="0600", unix_gid="daemon")
    source = DatagramSource(
        listener,
        bind_unix(listener, 0o660),
        EventQueue(10, 1 << 20, Stats()),
        Stats(),
        1024,
        adopted=True,
    )
    try:
        undo: list[Callable[[], object]] = []
        reloader_module._set_socket_options(source, old, new, undo)
        assert undo == [] and stat.S_IMODE(path.stat().st_mode) == 0o660
        assert reloader_module._adopted_keep([source], old, new) == [
            f"--unix-mode (0600), --unix-group not applied to unix:{path}: systemd passed "
            "it, and ingest.socket sets its options"
        ]
        assert reloader_module._adopted_keep([source], old, old) == []
    finally:
        source.close()
        path.unlink()
