"""The spool's on-disk format: pure encoding and decoding, no I/O.

A segment file is a header followed by records::

    header  MAGIC (8 bytes) | version u32 LE                      = 12 bytes
    record  RECORD_MAGIC (4) | length u32 LE | crc u32 LE | payload
    payload count u32 LE | count x event length u32 LE | the events' bytes

One record holds one batch of events (the overflow of one drain wake-up):
framing per batch rather than per event measured ~12x cheaper to append
(tools/bench_spool.py). The checksum is zlib.crc32 over the length field and
the payload, so a damaged length is caught as well as damaged data; CRC-32
detects every burst error of up to 32 bits, so any single damaged byte is
detected. RECORD_MAGIC starts with 0xFF, a byte that never occurs in valid
UTF-8 and therefore never in an accepted event: after damage, ``scan``
re-synchronises on the next magic whose record checks out.

The cursor file says where replay resumes::

    cursor  segment u64 | offset u64 | taken u64 | crc u32 LE     = 28 bytes

``offset`` is the record being replayed and ``taken`` how many of its events
were already handed on, so a restart resumes inside a record, never at its
start. The crc (zlib.crc32 of the 24 bytes before it) tells a torn cursor. The
cursor of earlier versions had no ``taken`` (20 bytes) and is still read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"INGSPOOL"
VERSION = 1
HEADER = MAGIC + struct.pack("<I", VERSION)
HEADER_BYTES = len(HEADER)
RECORD_MAGIC = b"\xffREC"
_RECORD_HEAD = struct.Struct("<4sII")  # magic, payload length, crc
RECORD_HEAD_BYTES = _RECORD_HEAD.size
_COUNT = struct.Struct("<I")
# A record never exceeds this: a spilled chunk is at most 256 datagrams of at
# most 1 MiB each (config.MAX_DATAGRAM_CEILING); anything larger is damage.
MAX_PAYLOAD_BYTES = 1 << 30
# Nor a segment: one maximal record, as the writer rolls segments before a
# record would overflow one unless it is empty. A larger file is not a segment.
MAX_SEGMENT_BYTES = HEADER_BYTES + RECORD_HEAD_BYTES + MAX_PAYLOAD_BYTES
_CURSOR = struct.Struct("<QQQI")  # segment, offset, taken, crc
_CURSOR_V1 = struct.Struct("<QQI")  # segment, offset, crc: earlier versions
CURSOR_BYTES = _CURSOR.size


class FormatError(Exception):
    """Not a segment of a version we read."""


def encode_record(events: list[bytes]) -> bytes:
    """One framed record holding ``events`` (at least one)."""
    count = len(events)
    payload = b"".join(
        (struct.pack(f"<I{count}I", count, *map(len, events)), *events),
    )
    length = _COUNT.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return RECORD_MAGIC + length + _COUNT.pack(crc) + payload


def split(events: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """``events`` in order, in runs whose payload stays within ``max_bytes``
    (an event larger than that alone), so no record outgrows a segment."""
    if sum(map(len, events)) + 4 * len(events) + 4 <= max_bytes:
        return [events]  # the usual case, at the cost of one sum
    runs, start, size = [], 0, 4
    for i, event in enumerate(events):
        if size + 4 + len(event) > max_bytes and i > start:
            runs.append(events[start:i])
            start, size = i, 4
        size += 4 + len(event)
    runs.append(events[start:])
    return runs


def check_header(data: bytes) -> None:
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an ingest spool segment (bad magic)")
    (version,) = _COUNT.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise FormatError(f"spool format version {version}; this ingest reads {VERSION}")


def _decode_payload(payload: memoryview) -> list[bytes] | None:
    if len(payload) < 4:
        return None
    (count,) = _COUNT.unpack_from(payload)
    table = 4 + 4 * count
    if count == 0 or table > len(payload):
        return None
    lengths = struct.unpack_from(f"<{count}I", payload, 4)
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


def record_at(data: bytes | memoryview, pos: int) -> Record | None:
    """The valid record starting at ``pos``, or None (torn, damaged, or not one)."""
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
    events = _decode_payload(payload)
    if events is None:
        return None
    return Record(pos, end, events)


@dataclass(slots=True)
class Damage:
    offset: int  # first byte that did not start a valid record
    end: int  # where the next valid record starts (or the end of the data)


def scan(data: bytes | memoryview, pos: int) -> Iterator[Record | Damage]:
    """Records from ``pos`` to the end; a stretch that is not a valid record
    yields one Damage and scanning resumes at the next valid record."""
    view = memoryview(data)
    size = len(view)
    raw = bytes(view) if isinstance(data, memoryview) else data
    while pos < size:
        record = record_at(view, pos)
        if record is not None:
            yield record
            pos = record.end
            continue
        bad = pos
        pos = raw.find(RECORD_MAGIC, pos + 1)
        while pos != -1 and record_at(view, pos) is None:
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
