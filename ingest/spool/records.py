"""The spool's on-disk format: pure encoding and decoding, no I/O.

A segment file is a header followed by records::

    header  MAGIC (8 bytes) | version u32 LE                      = 12 bytes
    record  RECORD_MAGIC (4) | length u32 LE | crc u32 LE | payload
    payload kind u8 | topic length u16 LE | topic (ASCII)
            | count u32 LE | count x event length u32 LE | the events' bytes

One record holds one batch of events (the overflow of one drain wake-up):
framing per batch rather than per event measured ~12x cheaper to append
(tools/bench/spool.py). The checksum is zlib.crc32 over the length field and
the payload, so a damaged length is caught as well as damaged data; CRC-32
detects every burst error of up to 32 bits, so any single damaged byte is
detected. RECORD_MAGIC starts with 0xFF, a byte that never occurs in valid
UTF-8 and therefore never in an accepted event: after damage, ``scan``
re-synchronises on the next magic whose record checks out. PubsubMessage
bodies (KIND_MESSAGES, below) are not UTF-8, as their varint lengths can hold
0xFF, so a magic may turn up inside one: a false start the crc rejects.

All of a record's events are of one ``kind`` (KIND_DATA: the plain path's
items; KIND_MESSAGES: PubsubMessage bodies) and go to one ``topic``: a Pub/Sub
topic ID (ASCII, at most MAX_TOPIC_BYTES), "" meaning whatever --topic is at
replay. The plain path's items are events as received and whole bodies (a
syslog event with its facts as attributes, pubsub.Body, typed in memory); in
a KIND_DATA record a body is the item whose first byte is 0x0a, data's field
tag. An event that starts with that byte is written as a body holding only
its data, which publishes the same (pipeline/message.py, ``to_data_record``;
``from_data_record`` types the bodies again at replay). Records of earlier
releases follow the same rule, as no event they hold starts with 0x0a.
The messages of one record share their ordering key too, since pipeline/lanes.py
spools them lane by lane: startup counts each key's spooled messages
(lanes.SpooledLanes.seen) by the first message of each record.

Versions: this is version 2, which is what new segments are written in.
Version 1 segments (without kind and topic: the payload starts at count),
which spools of older releases hold, are still read, their records as
KIND_DATA for topic "". The header says which; a segment is all of one
version. An ingest that reads version 1 only refuses anything else in
``check_header``, so at startup it sets a version 2 segment aside as
NAME.corrupt (logged, counted in ingest_spool_corrupt_records), never
replaying or deleting it. To replay one after upgrading again, rename it back
to a segment number above every existing one: the cursor has moved on
meanwhile, and a segment numbered below the cursor counts as replayed and is
deleted unread.

The cursor file says where replay resumes::

    cursor  segment u64 | offset u64 | taken u64 | crc u32 LE     = 28 bytes

``offset`` is the record being replayed and ``taken`` how many of its events
were already handed on, so a restart resumes inside a record, never at its
start. The crc (zlib.crc32 of the 24 bytes before it) tells a torn cursor. A
20-byte cursor without ``taken``, which spools of older releases hold, is
still read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"INGSPOOL"
VERSION = 2  # what segments are written in
READ_VERSIONS = (1, 2)
HEADER = MAGIC + struct.pack("<I", VERSION)
HEADER_BYTES = len(HEADER)
RECORD_MAGIC = b"\xffREC"
_RECORD_HEAD = struct.Struct("<4sII")  # magic, payload length, crc
RECORD_HEAD_BYTES = _RECORD_HEAD.size
_COUNT = struct.Struct("<I")
_KIND_TOPIC = struct.Struct("<BH")  # kind, topic length: the head of a v2 payload
_PAYLOAD_HEAD_BYTES = _KIND_TOPIC.size + _COUNT.size  # and the count; then the topic's
KIND_DATA = 0  # events as received
KIND_MESSAGES = 1  # PubsubMessage bodies
KINDS = (KIND_DATA, KIND_MESSAGES)
MAX_TOPIC_BYTES = 255  # the longest Pub/Sub topic ID
# A record never exceeds this: a spilled chunk is at most 256 datagrams of at
# most 1 MiB each (config.MAX_DATAGRAM_CEILING); anything larger is damage.
MAX_PAYLOAD_BYTES = 1 << 30
# Nor a segment: one maximal record, as the writer rolls segments before a
# record would overflow one unless it is empty. A larger file is not a segment.
MAX_SEGMENT_BYTES = HEADER_BYTES + RECORD_HEAD_BYTES + MAX_PAYLOAD_BYTES
_CURSOR = struct.Struct("<QQQI")  # segment, offset, taken, crc
_CURSOR_V1 = struct.Struct("<QQI")  # segment, offset, crc: older releases' spools
CURSOR_BYTES = _CURSOR.size


class FormatError(Exception):
    """Not a segment of a version we read."""


def encode_record(events: list[bytes], kind: int = KIND_DATA, topic: str = "") -> bytes:
    """One framed record holding ``events`` (at least one) of ``kind`` for
    ``topic``. ValueError for a kind or topic the format cannot hold: callers
    pass topic IDs config has checked, so that is a bug, not an input."""
    if kind not in KINDS:
        raise ValueError(f"spool record kind {kind} is none of {KINDS}")
    name = topic.encode("ascii")
    if len(name) > MAX_TOPIC_BYTES:
        raise ValueError(f"topic ID of {len(name)} bytes; at most {MAX_TOPIC_BYTES}")
    count = len(events)
    payload = b"".join(
        (
            _KIND_TOPIC.pack(kind, len(name)),
            name,
            struct.pack(f"<I{count}I", count, *map(len, events)),
            *events,
        ),
    )
    length = _COUNT.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return RECORD_MAGIC + length + _COUNT.pack(crc) + payload


def record_bytes(events: list[bytes], topic: str = "") -> int:
    """What one record holding ``events`` for ``topic`` takes, framing included."""
    return (
        RECORD_HEAD_BYTES
        + _PAYLOAD_HEAD_BYTES
        + len(topic)
        + 4 * len(events)
        + sum(map(len, events))
    )


def split(events: list[bytes], max_bytes: int, topic: str = "") -> list[list[bytes]]:
    """``events`` in order, in runs whose payload for ``topic`` stays within
    ``max_bytes`` (an event larger than that alone), so no record outgrows a
    segment."""
    fixed = _PAYLOAD_HEAD_BYTES + len(topic)  # topic IDs are ASCII: characters are bytes
    if sum(map(len, events)) + 4 * len(events) + fixed <= max_bytes:
        return [events]  # the usual case, at the cost of one sum
    runs, start, size = [], 0, fixed
    for i, event in enumerate(events):
        if size + 4 + len(event) > max_bytes and i > start:
            runs.append(events[start:i])
            start, size = i, fixed
        size += 4 + len(event)
    runs.append(events[start:])
    return runs


def check_header(data: bytes) -> int:
    """The segment's format version, which its records are read by."""
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an ingest spool segment (bad magic)")
    version: int = _COUNT.unpack_from(data, len(MAGIC))[0]
    if version not in READ_VERSIONS:
        readable = " and ".join(map(str, READ_VERSIONS))
        raise FormatError(f"spool format version {version}; this ingest reads {readable}")
    return version


def _decode_events(payload: memoryview, start: int) -> list[bytes] | None:
    """The events of the payload's count | lengths | events from ``start``."""
    if len(payload) < start + 4:
        return None
    (count,) = _COUNT.unpack_from(payload, start)
    table = start + 4 + 4 * count
    if count == 0 or table > len(payload):
        return None
    lengths = struct.unpack_from(f"<{count}I", payload, start + 4)
    if table + sum(lengths) != len(payload):
        return None
    events = []
    pos = table
    for size in lengths:
        events.append(bytes(payload[pos : pos + size]))
        pos += size
    return events


@dataclass(slots=True)
class Record:
    offset: int  # where the record starts in the buffer
    end: int  # offset of the byte after it
    events: list[bytes]
    kind: int = KIND_DATA
    topic: str = ""  # "" is --topic


def _decode_payload(payload: memoryview, version: int) -> tuple[int, str, list[bytes]] | None:
    """Kind, topic and events, or None when the payload is not one."""
    if version == 1:  # events only: data for --topic
        events = _decode_events(payload, 0)
        return None if events is None else (KIND_DATA, "", events)
    if len(payload) < _KIND_TOPIC.size:
        return None
    kind, size = _KIND_TOPIC.unpack_from(payload)
    if kind not in KINDS or size > MAX_TOPIC_BYTES:
        return None
    start = _KIND_TOPIC.size + size
    try:
        topic = str(payload[_KIND_TOPIC.size : start], "ascii")  # short if start is past the end
    except UnicodeDecodeError:
        return None
    events = _decode_events(payload, start)
    return None if events is None else (kind, topic, events)


def record_at(data: bytes | memoryview, pos: int, *, version: int = VERSION) -> Record | None:
    """The valid record of a ``version`` segment starting at ``pos``, or None
    (torn, damaged, or not one)."""
    view = memoryview(data)
    if pos + RECORD_HEAD_BYTES > len(view):
        return None
    magic, length, crc = _RECORD_HEAD.unpack_from(view, pos)
    if magic != RECORD_MAGIC or length > MAX_PAYLOAD_BYTES:
        return None
    start = pos + RECORD_HEAD_BYTES
    end = start + length
    if end > len(view):
        return None
    payload = view[start:end]
    if zlib.crc32(payload, zlib.crc32(view[pos + 4 : pos + 8])) != crc:
        return None
    decoded = _decode_payload(payload, version)
    if decoded is None:
        return None
    kind, topic, events = decoded
    return Record(pos, end, events, kind, topic)


@dataclass(slots=True)
class Damage:
    offset: int  # first byte that did not start a valid record
    end: int  # where the next valid record starts (or the end of the data)


def scan(
    data: bytes | memoryview, pos: int, *, version: int = VERSION
) -> Iterator[Record | Damage]:
    """Records of a ``version`` segment from ``pos`` to the end; a stretch that
    is not a valid record yields one Damage and scanning resumes at the next
    valid record."""
    view = memoryview(data)
    size = len(view)
    raw = bytes(view) if isinstance(data, memoryview) else data
    while pos < size:
        record = record_at(view, pos, version=version)
        if record is not None:
            yield record
            pos = record.end
            continue
        bad = pos
        pos = raw.find(RECORD_MAGIC, pos + 1)
        while pos != -1 and record_at(view, pos, version=version) is None:
            pos = raw.find(RECORD_MAGIC, pos + 1)
        if pos == -1:
            pos = size
        yield Damage(bad, pos)


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int  # the segment being replayed
    offset: int  # the record being replayed in it
    taken: int = 0  # events of that record already handed on


def encode_cursor(cursor: Cursor) -> bytes:
    head = struct.pack("<QQQ", cursor.seq, cursor.offset, cursor.taken)
    return head + _COUNT.pack(zlib.crc32(head))


def decode_cursor(raw: bytes) -> Cursor | None:
    """The cursor in ``raw`` (either layout), or None when it is damaged."""
    for layout in (_CURSOR, _CURSOR_V1):
        if len(raw) == layout.size:
            *fields, crc = layout.unpack(raw)
            return Cursor(*fields) if zlib.crc32(raw[:-4]) == crc else None
    return None
