"""Live reload (SIGHUP): what a running daemon takes over and what waits for
a restart (reload.plan, pure), and a daemon reloaded under steady load: no
event lost or duplicated, new attributes on later events, a listener added
and one removed, a broken file refused while the old configuration runs on."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import orjson

from ingest.config import Settings, build_settings
from ingest.reload import plan
from tests.conftest import PubSubNames
from tests.helpers import Daemons, UnixSender, wait_for
from tests.test_metrics_http import scrape, unaccounted, value
from tools.emulator import Emulator, free_port


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
        "attributes, ordering key and routes (switching between plain and metadata "
        "messages; needs a restart)"
    ]
    assert planned.changed == []


def test_a_route_to_a_new_topic_waits_for_a_restart_with_the_rest_of_the_metadata() -> None:
    old = settings(unix=["/run/a.sock"], routes=["errors:level=error"])
    new = settings(unix=["/run/a.sock"], routes=["audit:kind=audit"], attributes=["v=1"])
    planned = plan(old, new, ("events", "errors"))
    assert planned.settings.routes == old.routes and planned.settings.attributes == ()
    assert "a route to a topic not published to since startup: audit" in planned.kept[0]
    routed = plan(old, settings(unix=["/run/a.sock"], routes=["errors:level=fatal"]), old.topics)
    assert routed.kept == [] and routed.changed == ["routes"]


def test_listeners_from_systemd_or_the_defaults_stay() -> None:
    old = settings()  # no listener given: the defaults (or what systemd passes)
    planned = plan(old, settings(unix=["/run/b.sock"]), ("events",))
    assert planned.settings.listeners == old.listeners
    assert planned.kept == ["--udp/--unix (the listeners came from systemd or the defaults)"]


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
