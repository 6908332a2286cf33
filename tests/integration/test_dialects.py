"""Dialects at the reader: recognition on a real socket, what each format
puts in the queue, per-format accounting, disabled formats, GELF chunks
through the read loop (queue full, expiry at close), syslog attributes on
the plain path and with metadata configured.

The parsers themselves are tested in test_gelf.py, test_syslog.py and
test_statsd.py; the real clients end to end in test_emitters.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import tracemalloc
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pytest
from google.pubsub_v1.types import pubsub as pubsub_types
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import INPUT_FORMATS, Listener
from ingest.pipeline.message import MessageBuilder
from ingest.pipeline.queue import EventQueue
from ingest.publish.pubsub import Body, BodyEncoder, RequestEncoder, data_of
from ingest.receive.codec import MAX_DECODED_BYTES, decode_datagram
from ingest.receive.dialects import GELF, JSON, STATSD, SYSLOG, UNKNOWN, Dialects, recognise
from ingest.receive.gelf import Reassembler
from ingest.receive.sockets import bind_udp
from ingest.receive.sources import DatagramSource
from ingest.receive.wakeup import WakeUp
from ingest.stats import Stats
from ingest.vocabulary import Drop, Reject

PublishRequest = pubsub_types.PublishRequest.pb()
ALL = frozenset(INPUT_FORMATS)
TOPIC = "projects/p/topics/t"
GELF_RECORD = b'{"version":"1.1","host":"web-1","short_message":"hi","_user":7}'


def chunks(payload: bytes, size: int, msg_id: bytes | None = None) -> list[bytes]:
    """GELF chunks as graypy cuts them."""
    msg_id = os.urandom(8) if msg_id is None else msg_id
    count = -(-len(payload) // size)
    return [
        b"\x1e\x0f" + msg_id + bytes((seq, count)) + payload[seq * size : (seq + 1) * size]
        for seq in range(count)
    ]


class Reader:
    """A UDP source with dialects, fed through its socket."""

    def __init__(
        self,
        formats: Iterable[str] = ALL,
        *,
        max_events: int = 1_000_000,
        max_event_bytes: int = 1 << 20,
        wrap_text: bool = False,
        builder: MessageBuilder | None = None,
        max_pending_bytes: int = 1 << 20,
        tap: Any = None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.stats = Stats()
        listener = Listener("udp", host="127.0.0.1", port=0)
        sock = bind_udp(listener, 8 << 20)
        self.queue = EventQueue(max_events, 1 << 30, self.stats)
        decode = decode_datagram if builder is None else _messages(builder)
        self.dialects = Dialects(
            listener.label,
            frozenset(formats),
            decode,
            self.stats,
            Reassembler(max_pending_bytes, max_event_bytes),
            max_event_bytes=max_event_bytes,
            wrap_text=wrap_text,
            builder=builder,
        )
        self.source = DatagramSource(
            listener,
            sock,
            self.queue,
            self.stats,
            65535,
            decode=decode,
            dialects=self.dialects,
            tap=tap,
        )
        self.source.start(loop)
        self.label = listener.label
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.connect(sock.getsockname())

    def feed(self, *datagrams: bytes) -> list[Any]:
        """Send, read, and return everything queued so far."""
        for datagram in datagrams:
            self.sender.send(datagram)
        self.source.read_until_empty()
        return [event for chunk in self.queue.take_all() for event in chunk.events]

    def by_format(self) -> dict[str, int]:
        formats = {fmt: n for (_, fmt), n in self.stats.events_by_format.items() if n}
        formats[JSON] = self.stats.events_received[self.label] - sum(formats.values())
        return {fmt: n for fmt, n in formats.items() if n}

    def balanced(self, queued: int) -> bool:
        """received == accepted + rejected + dropped (nothing else can happen here)."""
        stats = self.stats
        return stats.events_received[self.label] == (
            queued + stats.rejected_total() + stats.dropped_total()
        )

    def close(self) -> None:
        self.source.close()
        self.sender.close()


def _messages(builder: MessageBuilder) -> Any:
    from ingest.receive.codec import decode_messages

    return lambda data, out, rejected, wake: decode_messages(
        data, out, rejected, wake, builder.build
    )


class Readers:
    """Makes a test's readers (``readers(...)`` takes Reader's options) on
    one event loop, which a source needs, and closes them after the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.made: list[Reader] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Reader:
        reader = Reader(*args, loop=self.loop, **kwargs)
        self.made.append(reader)
        return reader

    def close(self) -> None:
        for reader in self.made:
            reader.close()  # a second close is harmless
        self.loop.close()


@pytest.fixture
def readers() -> Iterator[Readers]:
    made = Readers()
    yield made
    made.close()


def published(items: list[bytes]) -> list[tuple[bytes, dict[str, str]]]:
    """What Pub/Sub would get for queued items of the plain pipeline."""
    request = PublishRequest.FromString(RequestEncoder(TOPIC).encode(items))
    return [(m.data, dict(m.attributes)) for m in request.messages]


def published_messages(items: list[tuple[Any, bytes]]) -> list[tuple[bytes, dict[str, str]]]:
    """What Pub/Sub would get for queued (lane, body) items of the metadata pipeline."""
    request = PublishRequest.FromString(BodyEncoder(TOPIC).encode([body for _, body in items]))
    return [(m.data, dict(m.attributes)) for m in request.messages]


# --- recognition ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b'{"a":1}', JSON),
        (b' {"a":1}', JSON),
        (b"[1]", JSON),
        (b"123", JSON),  # no "|": not statsd, rejected as JSON (not_object) as ever
        (b"not json", JSON),
        (b"", JSON),
        (zlib.compress(GELF_RECORD), GELF),
        (gzip.compress(GELF_RECORD), GELF),
        (chunks(GELF_RECORD, 20)[0], GELF),
        (b"<12>{}", SYSLOG),
        (b"<13>Nov 28 03:24:03 app: {}", SYSLOG),
        (b"<1x>", JSON),
        (b"a.b:1|c", STATSD),
        (b"x.y:1|c", STATSD),  # "x" is 0x78, zlib's first byte: its second is no zlib FLG
        (b"_e{1,1}:a|b", STATSD),
        (b"9lives:1|g", STATSD),
    ],
)
def test_recognised_by_leading_bytes(data: bytes, fmt: str) -> None:
    assert recognise(data) == fmt


# --- each format through the reader ------------------------------------------------


def test_every_format_on_one_listener_is_decoded_and_counted_by_format(readers: Readers) -> None:
    reader = readers()
    big = json.dumps({"short_message": "x", "_blob": os.urandom(3000).hex()}).encode()
    parts = chunks(zlib.compress(big), 1420)
    assert len(parts) > 2
    items = reader.feed(
        b'{"plain":1}',
        zlib.compress(GELF_RECORD),
        gzip.compress(GELF_RECORD),
        *reversed(parts),  # out of order
        b'<12>{"k":1}\x00',
        b"a.hits:1|c|#env:prod\nb:2|g\n",
    )
    got = published(items)
    data = [d for d, _ in got]
    assert data[0] == b'{"plain":1}'
    assert data[1:3] == [GELF_RECORD, GELF_RECORD]  # inflated, byte for byte
    assert data[3] == big  # reassembled and inflated
    assert got[4] == (b'{"k":1}', {"syslog_severity": "warning", "syslog_facility": "user"})
    assert [orjson.loads(d) for d in data[5:]] == [
        {"metric": "a.hits", "value": 1, "type": "c", "tags": {"env": "prod"}},
        {"metric": "b", "value": 2, "type": "g"},
    ]
    assert reader.by_format() == {JSON: 1, GELF: 3, SYSLOG: 1, STATSD: 2}
    stats = reader.stats
    assert stats.datagrams_received[reader.label] == 5 + len(parts)
    assert not stats.datagrams_ignored  # chunks are parts of a message, not "empty"
    assert reader.balanced(len(items))
    reader.close()


def test_rejects_of_each_format_are_counted_by_reason_and_format(readers: Readers) -> None:
    reader = readers()
    items = reader.feed(
        b"{nope",
        zlib.compress(b'{"trunc'),
        zlib.compress(b"[1,2]"),
        zlib.compress(GELF_RECORD)[:-3],  # truncated stream
        b"<999>{}",
        b"<13>Nov 28 03:24:03 app: plain words",
        b"a.b:x|c\nok:1|c",
    )
    assert [orjson.loads(d) for d, _ in published(items)] == [
        {"metric": "ok", "value": 1, "type": "c"}
    ]
    rejected = {k: v for k, v in reader.stats.rejected.items() if v}
    assert rejected == {
        "invalid_json": 3,  # "{nope", inflated '{"trunc', the syslog words
        "not_object": 1,
        "invalid_gelf": 1,
        "invalid_syslog": 1,
        "invalid_statsd": 1,
    }
    assert reader.by_format() == {JSON: 1, GELF: 3, SYSLOG: 2, STATSD: 2}
    assert reader.balanced(len(items))
    reader.close()


def test_a_disabled_format_is_rejected_as_format_disabled_under_its_format(
    readers: Readers,
) -> None:
    reader = readers({JSON, SYSLOG})
    items = reader.feed(
        zlib.compress(GELF_RECORD),
        b"a:1|c\nb:1|c",
        b'<12>{"k":1}',
        b'{"j":1}',
    )
    assert [d for d, _ in published(items)] == [b'{"k":1}', b'{"j":1}']
    assert reader.stats.rejected["format_disabled"] == 3  # one message, two lines
    assert reader.by_format() == {GELF: 1, STATSD: 2, SYSLOG: 1, JSON: 1}
    assert reader.balanced(len(items))
    reader.close()


def test_without_json_a_json_datagram_is_format_disabled_too(readers: Readers) -> None:
    reader = readers({STATSD})
    items = reader.feed(b'{"j":1}\n{"j":2}', b"a:1|c")
    assert len(items) == 1
    assert reader.stats.rejected["format_disabled"] == 2
    assert reader.by_format() == {JSON: 2, STATSD: 1}
    reader.close()


def test_oversized_datagrams_count_as_unknown_format(readers: Readers) -> None:
    reader = readers()
    reader.source._max_bytes = 100
    items = reader.feed(b"a:1|c" + b"\n" * 200, b"b:1|c")
    assert len(items) == 1
    assert reader.stats.rejected["too_large"] == 1
    assert reader.by_format() == {UNKNOWN: 1, STATSD: 1}
    reader.close()


# --- GELF bounds and chunks through the reader ---------------------------------------


def test_a_decompression_bomb_is_too_large_and_counted_once(readers: Readers) -> None:
    reader = readers(max_event_bytes=64 << 10)
    bomb = zlib.compress(b"{" + b" " * (8 << 20) + b"}", 9)
    assert len(bomb) < 65000
    items = reader.feed(bomb, zlib.compress(GELF_RECORD))
    assert [d for d, _ in published(items)] == [GELF_RECORD]
    assert reader.stats.rejected["too_large"] == 1
    assert reader.balanced(len(items))
    reader.close()


def test_duplicate_chunks_are_ignored_datagrams_and_incomplete_messages_end_at_close(
    readers: Readers,
) -> None:
    reader = readers()
    payload = zlib.compress(json.dumps({"b": os.urandom(2000).hex()}).encode())
    parts = chunks(payload, 500)
    lost = chunks(payload, 500)[:-1]  # another message, never completed
    items = reader.feed(parts[0], parts[0], *parts[1:], *lost)
    assert len(items) == 1
    stats = reader.stats
    assert stats.datagrams_ignored["gelf_duplicate_chunk"] == 1
    assert stats.events_received[reader.label] == 1  # the pending one: not yet an event
    pending = reader.source.gelf_pending
    assert pending is not None and pending[0] == 1 and pending[1] > 0
    reader.source.close()  # nothing more can come: it ends as incomplete
    assert stats.rejected["gelf_incomplete"] == 1
    assert reader.by_format() == {GELF: 2}
    assert reader.balanced(1)
    reader.sender.close()


def test_interleaved_chunked_messages_from_two_senders_both_complete(readers: Readers) -> None:
    reader = readers()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.connect(reader.sender.getpeername())
    first = json.dumps({"who": "a", "b": os.urandom(1500).hex()}).encode()
    second = json.dumps({"who": "b", "b": os.urandom(1500).hex()}).encode()
    a, b = chunks(zlib.compress(first), 400), chunks(gzip.compress(second), 400)
    for part_a, part_b in zip(a, b, strict=False):
        reader.sender.send(part_a)
        other.send(part_b)
    for part in a[len(b) :]:
        reader.sender.send(part)
    for part in b[len(a) :]:
        other.send(part)
    items = reader.feed()
    assert sorted(d for d, _ in published(items)) == sorted([first, second])
    assert not reader.stats.rejected_total()
    other.close()
    reader.close()


def test_a_full_queue_drops_a_chunked_message_once_when_it_completes(readers: Readers) -> None:
    reader = readers(max_events=1)
    reader.feed(b'{"fills":1}')  # drained out: the queue is empty again
    reader.queue.put([b"{}"], 0.0)  # and now full
    payload = zlib.compress(json.dumps({"b": os.urandom(1000).hex()}).encode())
    items = reader.feed(*chunks(payload, 300), zlib.compress(GELF_RECORD))
    assert items == [b"{}"]
    assert reader.stats.dropped[Drop.QUEUE_FULL] == 2  # the chunked message, the whole one
    assert reader.by_format() == {JSON: 1, GELF: 2}
    reader.close()


# --- syslog: the plain path carries bodies -----------------------------------------------


def test_syslog_facts_are_attributes_and_the_data_is_byte_for_byte(readers: Readers) -> None:
    reader = readers()
    items = reader.feed(
        b'<13>Nov 28 03:24:03 vm app[42]: {"k": 1}',
        b'<165>1 2026-11-28T03:24:03Z host app 7 ID - \xef\xbb\xbf{"k":2}',
        b'{"plain":true}',
    )
    assert published(items) == [
        (
            b'{"k": 1}',
            {
                "syslog_severity": "notice",
                "syslog_facility": "user",
                "syslog_timestamp": "Nov 28 03:24:03",
                "syslog_host": "vm",
                "syslog_app": "app",
                "syslog_pid": "42",
            },
        ),
        (
            b'{"k":2}',
            {
                "syslog_severity": "notice",
                "syslog_facility": "local4",
                "syslog_timestamp": "2026-11-28T03:24:03Z",
                "syslog_host": "host",
                "syslog_app": "app",
                "syslog_pid": "7",
            },
        ),
        (b'{"plain":true}', {}),
    ]
    reader.close()


def test_syslog_wrap_text_publishes_the_text_in_an_object(readers: Readers) -> None:
    reader = readers(wrap_text=True)
    items = reader.feed(b"<14>plain words\n", b"<14>[1]", b"<14>\xff\xfe")
    assert [orjson.loads(d) for d, _ in published(items)] == [
        {"message": "plain words"},
        {"message": "[1]"},
        {"message": "\ufffd\ufffd"},
    ]
    assert not reader.stats.rejected_total()
    reader.close()


def test_a_syslog_fact_over_pubsubs_value_limit_is_skipped_not_fatal(readers: Readers) -> None:
    reader = readers()
    host = b"h" * 1100
    items = reader.feed(b"<13>Nov 28 03:24:03 " + host + b' app: {"k":1}')
    [(data, attributes)] = published(items)
    assert data == b'{"k":1}'
    assert "syslog_host" not in attributes and attributes["syslog_app"] == "app"
    assert reader.stats.attributes_skipped["value_too_long"] == 1
    reader.close()


def test_with_metadata_syslog_facts_join_the_configured_attributes(readers: Readers) -> None:
    skipped: defaultdict[str, int] = defaultdict(int)
    builder = MessageBuilder([("env", "prod")], [("kind", "kind")], skipped)
    reader = readers(builder=builder)
    items = reader.feed(b'<12>{"kind":"a"}\x00', b"a:1|c", zlib.compress(b'{"kind":"g"}'))
    got = published_messages(items)
    assert got == [
        (
            b'{"kind":"a"}',
            {
                "env": "prod",
                "kind": "a",
                "syslog_severity": "warning",
                "syslog_facility": "user",
            },
        ),
        (b'{"metric":"a","value":1,"type":"c"}', {"env": "prod"}),
        (b'{"kind":"g"}', {"env": "prod", "kind": "g"}),
    ]
    reader.close()


class RecordingHub:
    """A tap that takes every datagram's record (tapped.Hub), when offered."""

    active = True

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def offer(self, listener: str, fmt: str, outcome: str, make_record: Any) -> None:
        self.records.append(make_record())


def test_a_tap_shows_gelfs_inflated_text_and_every_other_datagram_its_own(readers: Readers) -> None:
    """What a tap shows of a GELF message is its inflated payload, chunked
    too (the record of the chunk that completed it); a syslog datagram read
    after it in the same wake-up shows its own bytes, and so does a GELF
    datagram that does not inflate, rejected: the text is the datagram's."""

    hub = RecordingHub()
    reader = readers(tap=hub)
    payload = zlib.compress(GELF_RECORD)
    first, second = chunks(payload, len(payload) // 2 + 1)
    syslog = b"<13>1 2026-01-01T00:00:00Z web1 app - - - {}"
    corrupt = b"\x78\x9c" + b"not deflate"
    reader.feed(zlib.compress(GELF_RECORD), first, second, syslog, corrupt)
    shown = [(r["format"], r["outcome"], r["text"]) for r in hub.records]
    assert shown == [
        (GELF, "accepted", GELF_RECORD.decode()),
        (GELF, "accepted", GELF_RECORD.decode()),  # the first chunk ended no message
        (SYSLOG, "accepted", syslog.decode()),
        (GELF, "rejected", corrupt.decode("utf-8", "backslashreplace")),
    ]
    reader.close()


def test_a_gelf_payload_with_whitespace_around_it_is_published_without(readers: Readers) -> None:
    reader = readers()
    items = reader.feed(zlib.compress(b"\n\n  " + GELF_RECORD + b"\r\n"))
    assert published(items) == [(GELF_RECORD, {})]
    reader.close()


# --- the invariant the plain path relies on --------------------------------------------------

prefixes = st.sampled_from(
    [b"", b"{", b"<13>", b"<12>\n", b"x\x9c", b"\x1f\x8b", b"\x1e\x0f", b"a:1|", b"\n", b" "]
)


# What follows a prefix: any bytes, or a JSON object, with whitespace before it or not.
objects = st.builds(
    lambda space, value: space + orjson.dumps(value),
    st.sampled_from([b"", b"\n", b" ", b"\r\n"]),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**53), 2**53), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(prefixes, st.one_of(st.binary(max_size=60), objects)), min_size=1, max_size=8
    )
)
def test_every_queued_item_is_a_typed_body_or_an_event_that_is_an_object(
    datagrams: list[tuple[bytes, bytes]],
) -> None:
    """Whatever arrives, a queued item of the plain path is a JSON object's
    bytes, or a Body (typed so: the encoder goes by the type) whose data
    is one: never a body untyped."""
    stats = Stats()
    dialects = Dialects(
        "test",
        ALL,
        decode_datagram,
        stats,
        Reassembler(1 << 20, 1 << 20),
        max_event_bytes=1 << 20,
    )
    out: list[bytes] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    wake = WakeUp()
    for prefix, rest in datagrams:
        data = prefix + rest
        if data[:1] == b"{":
            decode_datagram(data, out, rejected)
        else:
            dialects.decode(data, out, rejected, wake)
        for item in out:
            if type(item) is Body:
                assert type(orjson.loads(data_of(item))) is dict
            else:
                assert type(item) is bytes
                assert type(orjson.loads(item)) is dict
    for data, _ in published(out):
        assert type(orjson.loads(data)) is dict


def test_a_syslog_message_that_starts_with_a_newline_is_published_as_it_came(
    readers: Readers,
) -> None:
    """JSON may start with whitespace: a syslog message whose text starts
    with a newline (0x0a, the byte a body starts with) is published byte
    for byte, with its facts."""

    reader = readers()
    items = reader.feed(b'<12>\n{"a":1}')
    assert [type(item) for item in items] == [Body]
    assert published(items) == [
        (b'\n{"a":1}', {"syslog_severity": "warning", "syslog_facility": "user"})
    ]
    reader.close()


def test_one_wake_up_stops_at_its_bytes_budget_counting_inflated_gelf(readers: Readers) -> None:
    """Small datagrams that inflate to a lot (kept, or refused as bombs) end
    a wake-up at WAKEUP_MAX_BYTES of inflated bytes, as bytes read would."""

    reader = readers(max_event_bytes=512 << 10)
    big = b'{"pad":"' + b" " * (300 << 10) + b'"}'  # 300 KiB, compresses to ~300 B
    bomb = zlib.compress(b"{" + b" " * (4 << 20) + b"}")
    for datagram in [zlib.compress(big)] * 10 + [bomb] * 10:
        reader.sender.send(datagram)
    # 1 MiB a wake-up, the datagram that crosses it included: 4 of 300 KiB,
    # again, then 2 of them and a bomb (charged its 512 KiB bound), then bombs
    assert read_per_wake_up(reader) == [4, 4, 3, 2, 2, 2, 2, 1]
    assert reader.stats.rejected["too_large"] == 10
    reader.close()


def read_per_wake_up(reader: Reader) -> list[int]:
    """Datagrams each wake-up took, until the socket is empty."""
    wake_ups = []
    while True:
        before = reader.stats.datagrams_received[reader.label]
        more = reader.source.read()
        wake_ups.append(reader.stats.datagrams_received[reader.label] - before)
        if not more:
            return wake_ups


def test_one_wake_up_stops_at_its_bytes_budget_counting_what_statsd_writes(
    readers: Readers,
) -> None:
    """A datagram of 994 bytes (under 2 KiB: not counted as bytes received)
    whose 300 samples each carry its 100 tags writes 340 KB: the fourth ends
    a wake-up, as 1 MiB received would. Counted in events alone, 28 would."""

    reader = readers()
    tags = b",".join(b"t%d" % i for i in range(100))
    datagram = b"m:" + b":".join([b"1"] * 300) + b"|c|#" + tags
    assert len(datagram) < 2048
    for _ in range(12):
        reader.sender.send(datagram)
    assert read_per_wake_up(reader) == [4, 4, 4, 0]
    assert reader.balanced(12 * 300)
    reader.close()


def test_with_metadata_the_messages_of_many_json_lines_count_against_the_wake_up(
    readers: Readers,
) -> None:
    """Every line's message gets the attributes (1 KB here): a datagram of
    40 "{}" lines writes 41 KB, and 26 of them end a wake-up."""

    skipped: defaultdict[str, int] = defaultdict(int)
    builder = MessageBuilder([("pad", "x" * 1000)], [], skipped)
    reader = readers(builder=builder)
    for _ in range(30):
        reader.sender.send(b"{}\n" * 40)
    assert read_per_wake_up(reader) == [26, 4]
    items = [event for chunk in reader.queue.take_all() for event in chunk.events]
    assert len(items) == 30 * 40
    reader.close()


def test_a_datagram_of_statsd_with_metadata_is_bounded_in_bodies_and_accounted(
    readers: Readers,
) -> None:
    skipped: defaultdict[str, int] = defaultdict(int)
    builder = MessageBuilder([("env", "prod")], [("metric", "metric")], skipped)
    reader = readers(builder=builder)
    tags = b",".join(b"t%d" % i for i in range(4000))
    datagram = b"m:" + b":".join([b"1"] * 16000) + b"|c|#" + tags
    items = reader.feed(datagram)
    assert 0 < sum(len(body) for _, body in items) <= MAX_DECODED_BYTES
    assert reader.stats.rejected[Reject.DECODED_TOO_LARGE] == 16000 - len(items)
    assert reader.stats.events_received[reader.label] == 16000
    assert reader.balanced(len(items))
    assert published_messages(items)[0][1] == {"env": "prod", "metric": "m"}
    reader.close()


def test_a_wrapped_syslog_text_is_bounded_too() -> None:
    """--syslog-wrap-text writes "\\u0001" for a byte 0x01: six times the
    text. A datagram (up to --max-datagram-bytes, 1 MiB) wrapping to more
    than the bound is rejected decoded_too_large, its bytes counted as built."""
    stats = Stats()
    dialects = Dialects(
        "x", ALL, decode_datagram, stats, Reassembler(1 << 20, 1 << 20),
        max_event_bytes=1 << 20, wrap_text=True,
    )  # fmt: skip
    out: list[Any] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    fits = b"\x01" * ((MAX_DECODED_BYTES - 20) // 6)
    wake = WakeUp()
    assert dialects.decode(b"<13>" + fits, out, rejected, wake) == 1
    [body] = out  # with the facts as attributes
    assert len(data_of(body)) <= MAX_DECODED_BYTES
    assert dialects.decode(b"<13>" + fits * 2, out, rejected, wake) == 1
    assert len(out) == 1
    assert dict(rejected) == {Reject.DECODED_TOO_LARGE: 1}
    assert wake.written > 2 * MAX_DECODED_BYTES


def test_syslog_facts_of_hostile_length_are_not_kept() -> None:
    """The facts' encodings are cached, but not a hostname of 60 KB: 2,000 of
    them, each new, would hold 115 MiB."""
    stats = Stats()
    dialects = Dialects(
        "x", ALL, decode_datagram, stats, Reassembler(1 << 20, 1 << 20), max_event_bytes=1 << 20
    )
    rejected: defaultdict[str, int] = defaultdict(int)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(2000):
            host = b"%05d" % i + b"h" * 60_000
            dialects.decode(b"<13>1 - " + host + b" app - - - {}", [], rejected, WakeUp())
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 << 20, held
    assert stats.attributes_skipped["value_too_long"] == 2000
    out: list[Any] = []
    dialects.decode(b"<13>Nov 28 03:24:03 web1 app: {}", out, rejected, WakeUp())
    assert published(out) == [
        (
            b"{}",
            {
                "syslog_severity": "notice",
                "syslog_facility": "user",
                "syslog_timestamp": "Nov 28 03:24:03",
                "syslog_host": "web1",
                "syslog_app": "app",
            },
        )
    ]


def test_a_full_queue_counts_a_turned_away_format_under_its_format(readers: Readers) -> None:
    reader = readers({JSON}, max_events=1)
    reader.queue.put([b"{}"], 0.0)  # full
    payload = zlib.compress(b'{"m":"' + b"\n" * 50 + b'"}')
    items = reader.feed(payload, b"a:1|c\nb:1|c")
    assert items == [b"{}"]
    assert reader.stats.dropped[Drop.QUEUE_FULL] == 3  # one GELF datagram, two statsd lines
    assert reader.by_format() == {GELF: 1, STATSD: 2}
    reader.close()
