"""The two flows behind one interface (flows.py): which the settings choose,
once, and what each carries, typed: on the plain path a syslog event's body
is a pubsub.Body, in memory and back from the spool, whatever the first
byte of an event."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from google.pubsub_v1.types import pubsub as pubsub_types

from ingest import wiring
from ingest.config import Listener, RouteRule, Settings
from ingest.flows import Decoding, MessageFlow, PlainFlow, flow_for
from ingest.pipeline.batch import Batcher
from ingest.pipeline.lanes import LaneBatcher, LaneQueue
from ingest.pipeline.queue import EventQueue
from ingest.pipeline.replay import replay_step
from ingest.publish.health import PubSubHealth
from ingest.publish.pubsub import Body, BodyEncoder, RequestEncoder, body_of, encode_attribute
from ingest.receive.codec import decode_datagram
from ingest.receive.dialects import Dialects
from ingest.receive.gelf import Reassembler
from ingest.receive.wakeup import WakeUp
from ingest.spool import Spool
from ingest.stats import Stats

PublishRequest = pubsub_types.PublishRequest.pb()
UDP = Listener("udp", host="127.0.0.1", port=0)
UNIX = Listener("unix", path="/run/ingest/events.sock")
SYSLOG_APP = encode_attribute(b"syslog_app", b"app")

PLAIN = Settings(project="p", topic="events", listeners=())
METADATA = {
    "attributes": {"attributes": (("host", "web-1"),)},
    "attribute_fields": {"attribute_fields": (("kind", "kind"),)},
    "ordering_key_field": {"ordering_key_field": "user"},
    "routes": {"routes": (RouteRule("events-routed", "user", "u0"),)},
    "unix_credentials": {"unix_credentials": True},
}


class NoClient:
    """The pipeline asks its client for nothing here: nothing is sent."""

    topic_path = "projects/p/topics/events"


def with_(settings: Settings = PLAIN, **values: Any) -> Settings:
    return dataclasses.replace(settings, **values)


def messages(request: bytes) -> list[tuple[bytes, dict[str, str]]]:
    return [(m.data, dict(m.attributes)) for m in PublishRequest.FromString(request).messages]


def queued(flow: PlainFlow) -> list[bytes]:
    return [event for _, chunk in flow.take_queued() for event in chunk.events]


# ------------------------------------------------------------ the choice
def test_without_metadata_the_flow_is_plain() -> None:
    flow = flow_for(PLAIN, Stats())
    assert type(flow) is PlainFlow
    assert type(flow.queue) is EventQueue and type(flow.batcher) is Batcher
    assert [type(encoder) for encoder in flow.encoders] == [RequestEncoder]
    assert flow.spill is None  # no spool: what is left is counted, not spilled


@pytest.mark.parametrize("option", sorted(METADATA))
def test_each_kind_of_metadata_chooses_the_message_flow(option: str) -> None:
    settings = with_(**METADATA[option])
    flow = flow_for(settings, Stats())
    assert type(flow) is MessageFlow
    assert type(flow.queue) is LaneQueue and type(flow.batcher) is LaneBatcher
    # One encoder per topic, each taking every message as a body.
    assert [type(encoder) for encoder in flow.encoders] == [BodyEncoder] * len(settings.topics)


@pytest.mark.parametrize("metadata", [False, True])
def test_with_a_spool_both_flows_spill_to_it(tmp_path: Path, metadata: bool) -> None:
    settings = with_(**METADATA["attributes"]) if metadata else PLAIN
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    flow = flow_for(settings, Stats(), spool)
    assert flow.spill is not None and flow.queue.spill is not None
    flow.spill([b'{"left":1}'], None)
    assert spool.events == 1
    spool.close()


def test_the_pipeline_chooses_its_flow_once_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built once, at construction; a reload, replay's pause rule and the
    shutdown calls all ask that same flow."""
    made: list[object] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        flow = flow_for(*args, **kwargs)
        made.append(flow)
        return flow

    monkeypatch.setattr(wiring, "flow_for", counted)
    settings = with_(**METADATA["attributes"])
    pipeline = wiring.Pipeline(settings, Stats(), NoClient())  # type: ignore[arg-type]
    pipeline.reconfigure(with_(settings, attributes=(("host", "web-2"),)), True)
    assert not pipeline.replay_paused()
    assert pipeline.queued_by_lane() == []
    pipeline.put_back()
    assert made == [pipeline.flow]
    assert pipeline.queue is pipeline.flow.queue


def failing(*topics: str) -> PubSubHealth:
    health = PubSubHealth()
    for topic in topics:
        health.finished(health.started(0.0), 0.0, "NOT_FOUND", topic)
    return health


def test_plain_replay_waits_whenever_pub_sub_fails() -> None:
    for health, paused in ((PubSubHealth(), False), (failing("events"), True)):
        pipeline = wiring.Pipeline(PLAIN, Stats(), NoClient(), health=health)  # type: ignore[arg-type]
        assert pipeline.replay_paused() is paused


def test_with_lanes_replay_waits_only_while_failing_topics_are_not_parked_beside_others() -> None:
    settings = with_(**METADATA["routes"])
    health = failing("events-routed")
    pipeline = wiring.Pipeline(settings, Stats(), NoClient(), health=health)  # type: ignore[arg-type]
    queue = pipeline.queue
    assert isinstance(queue, LaneQueue)
    assert pipeline.replay_paused()  # failing, not yet parked
    queue.park(1, 0.0)
    assert not pipeline.replay_paused()  # parked while --topic publishes
    health.finished(health.started(0.0), 0.0, "NOT_FOUND", "events")
    assert pipeline.replay_paused()  # every topic failing


# ---------------------------------------------------------- the readers
def test_the_plain_flow_decodes_events_as_they_are() -> None:
    flow = flow_for(PLAIN, Stats())
    assert flow.decoding(UDP, PLAIN) == Decoding(decode_datagram)
    assert flow.decoding(UNIX, PLAIN) == Decoding(decode_datagram)


def test_every_reader_shares_the_flows_builder_and_unix_ones_learn_senders() -> None:
    """The sender reaches the builder through each wake-up, so one builder
    serves every reader; only unix listeners read credentials."""
    settings = with_(unix_credentials=True)
    flow = flow_for(settings, Stats())
    assert isinstance(flow, MessageFlow)
    unix = flow.decoding(UNIX, settings)
    assert unix.credentials and unix.builder is flow.lanes.builder
    assert flow.decoding(UNIX, settings).builder is unix.builder
    udp = flow.decoding(UDP, settings)
    assert not udp.credentials and udp.builder is flow.lanes.builder


def test_a_reload_changes_the_builder_new_readers_get() -> None:
    settings = with_(**METADATA["attributes"])
    flow = flow_for(settings, Stats())
    assert isinstance(flow, MessageFlow)
    flow.reconfigure(with_(settings, attributes=(("host", "web-2"),), queue_max_events=7), True)
    assert flow.decoding(UDP, settings).builder is flow.lanes.builder
    assert flow.queue.max_events == 7
    out: list[Any] = []
    flow.decoding(UDP, settings).decode(b"{}", out, defaultdict(int), WakeUp())
    [(_, body)] = out
    assert messages(flow.encoders[0].encode([body])) == [(b"{}", {"host": "web-2"})]


# ------------------------------------------------- typed on the plain path
def plain_dialects(flow: PlainFlow) -> Dialects:
    decoding = flow.decoding(UDP, PLAIN)
    return Dialects(
        UDP.label,
        PLAIN.input_formats,
        decoding.decode,
        Stats(),
        Reassembler(1 << 20, 1 << 20),
        max_event_bytes=1 << 20,
        builder=decoding.builder,
    )


def test_a_syslog_event_on_the_plain_path_is_published_with_its_facts() -> None:
    flow = PlainFlow(PLAIN, Stats())
    out: list[bytes] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    plain_dialects(flow).decode(b'<13>app: {"via":"syslog"}', out, rejected, WakeUp())
    decode_datagram(b'{"via":"json"}', out, rejected, WakeUp())
    flow.queue.put(out, 0.0)
    items = queued(flow)
    assert [type(item) for item in items] == [Body, bytes]
    assert messages(flow.encoders[0].encode(items)) == [
        (
            b'{"via":"syslog"}',
            {"syslog_app": "app", "syslog_severity": "notice", "syslog_facility": "user"},
        ),
        (b'{"via":"json"}', {}),
    ]


def test_spilled_and_replayed_a_body_stays_one_and_an_event_stays_an_event(
    tmp_path: Path,
) -> None:
    """On disk a body is told apart by its first byte (spool/records.py): an
    event that starts with that byte, 0x0a, is spooled as a body of its data
    alone, and comes back published as it came; a body comes back typed,
    with its attributes."""
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    flow = PlainFlow(with_(queue_max_events=1), stats, spool)
    event = b'\n{"b":2}'  # JSON may start with whitespace
    flow.queue.put([b'{"a":1}', event, body_of(b'{"c":3}', SYSLOG_APP), b"\n"], 0.0)
    assert (flow.queue.events, spool.events) == (1, 3)
    assert queued(flow) == [b'{"a":1}']
    back: list[bytes] = []
    while replay_step(spool, flow.queue, 0.0, flow.admit):
        back += queued(flow)
    assert messages(flow.encoders[0].encode(back)) == [
        (event, {}),
        (b'{"c":3}', {"syslog_app": "app"}),
        (b"\n", {}),
    ]
    spool.close()


# ------------------------------------------------ spools of earlier releases
def old_data_segment(items: list[bytes]) -> bytes:
    """A version 2 segment of one KIND_DATA record for --topic, byte by byte
    from the layout (spool/records.py): what earlier releases wrote on the
    plain path, a syslog body among the events, its first byte 0x0a."""
    payload = (
        struct.pack("<BH", 0, 0)
        + struct.pack(f"<I{len(items)}I", len(items), *map(len, items))
        + b"".join(items)
    )
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    record = b"\xffREC" + length + struct.pack("<I", crc) + payload
    return b"INGSPOOL" + struct.pack("<I", 2) + record


OLD_ITEMS = [
    b'{"kind":"a"}',
    b'\x0a\x0c{"kind":"b"}' + SYSLOG_APP,  # a body as the plain path spooled it
]


def test_an_old_spool_replays_its_bodies_with_their_attributes_on_the_plain_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "seg-000000000000.spool").write_bytes(old_data_segment(OLD_ITEMS))
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    flow = PlainFlow(PLAIN, stats, spool)
    assert replay_step(spool, flow.queue, 0.0, flow.admit) == 2
    items = queued(flow)
    assert [type(item) for item in items] == [bytes, Body]
    assert messages(flow.encoders[0].encode(items)) == [
        (b'{"kind":"a"}', {}),
        (b'{"kind":"b"}', {"syslog_app": "app"}),
    ]
    spool.close()


def test_an_old_spool_replays_its_bodies_with_their_attributes_and_todays_with_metadata(
    tmp_path: Path,
) -> None:
    (tmp_path / "seg-000000000000.spool").write_bytes(old_data_segment(OLD_ITEMS))
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    settings = with_(attributes=(("host", "web-1"),), attribute_fields=(("kind", "kind"),))
    flow = flow_for(settings, stats, spool)
    assert replay_step(spool, flow.queue, 0.0, flow.admit) == 2
    bodies = [body for _, chunk in flow.take_queued() for body in chunk.events]
    assert messages(flow.encoders[0].encode(bodies)) == [
        (b'{"kind":"a"}', {"host": "web-1", "kind": "a"}),
        (b'{"kind":"b"}', {"host": "web-1", "kind": "b", "syslog_app": "app"}),
    ]
    spool.close()
