"""Spool format version 2: every record remembers the kind of its events and
their topic; segments written in version 1 are still replayed.

Version 1 bytes are built here by hand from the layout, not with spool/records.py, so
the old format stays pinned whatever records.py becomes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.spool import RECORDS_PER_SEGMENT, Spool, records
from ingest.spool.records import KIND_DATA, KIND_MESSAGES
from ingest.vocabulary import Drop
from tests.unit.test_spool import open_spool, replay_all, segment_files, text_events

SEG0 = "seg-000000000000.spool"
LONGEST_TOPIC = "t" + "x" * 254  # 255 characters, Pub/Sub's longest topic ID
topics = st.text(alphabet="abcxyz-_.~+%0123456789", max_size=255)
kinds = st.sampled_from(records.KINDS)


def v1_record(events: list[bytes]) -> bytes:
    """A record as version 1 wrote it: the payload is count | lengths | events."""
    payload = struct.pack(f"<I{len(events)}I", len(events), *map(len, events)) + b"".join(events)
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return b"\xffREC" + length + struct.pack("<I", crc) + payload


def v1_segment(*batches: list[bytes]) -> bytes:
    return b"INGSPOOL" + struct.pack("<I", 1) + b"".join(map(v1_record, batches))


def replay_records(spool: Spool) -> list[tuple[list[bytes], int, str]]:
    out = []
    while (record := spool.peek_record()) is not None:
        out.append((record.events, record.kind, record.topic))
        spool.consume()
    return out


# ------------------------------------------------------------------ the format


def test_the_v2_record_layout() -> None:
    payload = b"\x01" + b"\x05\x00" + b"t-one" + b"\x02\x00\x00\x00"
    payload += b"\x02\x00\x00\x00" + b"\x01\x00\x00\x00" + b"ab" + b"c"
    length = struct.pack("<I", len(payload))
    crc = struct.pack("<I", zlib.crc32(payload, zlib.crc32(length)))
    assert records.encode_record([b"ab", b"c"], KIND_MESSAGES, "t-one") == (
        b"\xffREC" + length + crc + payload
    )
    assert records.HEADER == b"INGSPOOL\x02\x00\x00\x00"


@given(text_events, kinds, topics)
def test_kind_and_topic_round_trip(events: list[bytes], kind: int, topic: str) -> None:
    data = records.encode_record(events, kind, topic)
    record = records.record_at(data, 0)
    assert record is not None
    assert (record.events, record.kind, record.topic, record.end) == (
        events,
        kind,
        topic,
        len(data),
    )


@given(text_events)
def test_a_v1_record_reads_as_data_for_the_default_topic(events: list[bytes]) -> None:
    record = records.record_at(v1_record(events), 0, version=1)
    assert record is not None
    assert (record.events, record.kind, record.topic) == (events, KIND_DATA, "")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(text_events, kinds, topics), min_size=1, max_size=5), st.data())
def test_single_byte_damage_never_yields_a_wrong_kind_or_topic(
    written: list[tuple[list[bytes], int, str]], data: st.DataObject
) -> None:
    encoded = [records.encode_record(*record) for record in written]
    buf = bytearray(b"".join(encoded))
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] ^= data.draw(st.integers(1, 255))
    found = list(records.scan(bytes(buf), 0))
    good = [(i.events, i.kind, i.topic) for i in found if isinstance(i, records.Record)]
    damaged, end = 0, len(encoded[0])
    while pos >= end:
        damaged += 1
        end += len(encoded[damaged])
    assert good == [record for i, record in enumerate(written) if i != damaged]
    assert sum(isinstance(item, records.Damage) for item in found) == 1


@pytest.mark.parametrize(
    ("kind", "topic"),
    [(2, ""), (KIND_DATA, "x" * 256), (KIND_DATA, "tópico")],
)
def test_what_a_record_cannot_hold_is_refused(kind: int, topic: str) -> None:
    with pytest.raises(ValueError):
        records.encode_record([b"{}"], kind, topic)


def test_a_record_with_an_unknown_kind_is_not_read_even_with_a_good_crc() -> None:
    payload = b"\x02\x00\x00" + struct.pack("<II", 1, 2) + b"{}"
    length = struct.pack("<I", len(payload))
    crc = struct.pack("<I", zlib.crc32(payload, zlib.crc32(length)))
    assert records.record_at(b"\xffREC" + length + crc + payload, 0) is None


@pytest.mark.parametrize("version", [1, 2])
def test_versions_read(version: int) -> None:
    assert records.check_header(b"INGSPOOL" + struct.pack("<I", version)) == version


@given(
    st.lists(st.binary(max_size=50), min_size=1, max_size=40),
    st.integers(8, 400),
    topics,
)
def test_split_counts_the_topic_in_the_bound(
    events: list[bytes], max_bytes: int, topic: str
) -> None:
    runs = records.split(events, max_bytes, topic)
    assert [e for run in runs for e in run] == events
    for run in runs:
        payload = len(records.encode_record(run, KIND_MESSAGES, topic)) - 12
        assert run and (payload <= max_bytes or len(run) == 1)


def test_a_batch_that_just_fits_without_a_topic_is_cut_with_the_longest_one() -> None:
    events = [b"e" * 96] * 10  # payload with topic "": 3 + 4 + 10 x (4 + 96) = 1007
    assert records.split(events, 1007) == [events]
    assert len(records.split(events, 1006)) == 2
    runs = records.split(events, 1007, LONGEST_TOPIC)
    assert [len(run) for run in runs] == [7, 3]  # 262 + 7 x 100 fits, 8 x 100 does not
    for run in runs:
        assert len(records.encode_record(run, KIND_MESSAGES, LONGEST_TOPIC)) - 12 <= 1007


# ------------------------------------------------------------------- the spool


def test_kind_and_topic_survive_a_restart(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    spool.append([b'{"a":1}'])
    spool.append([b"body-1", b"body-2"], kind=KIND_MESSAGES, topic=LONGEST_TOPIC)
    spool.append([b"body-3"], kind=KIND_MESSAGES, topic="")
    spool.close()
    again, stats = open_spool(tmp_path)
    assert stats.spool_recovered == 4
    assert replay_records(again) == [
        ([b'{"a":1}'], KIND_DATA, ""),
        ([b"body-1", b"body-2"], KIND_MESSAGES, LONGEST_TOPIC),
        ([b"body-3"], KIND_MESSAGES, ""),
    ]
    again.close()


def test_interleaved_kinds_and_topics_keep_their_own_across_segments(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path, max_bytes=1 << 20)  # 128 KiB segments
    event = b"x" * 1000
    expected = []
    for i in range(300):  # ~300 KB: several segments
        kind, topic = [(KIND_DATA, ""), (KIND_MESSAGES, "t-a"), (KIND_MESSAGES, "t-b")][i % 3]
        spool.append([event + b"%d" % i], kind, topic)
        expected.append(([event + b"%d" % i], kind, topic))
    assert spool.segments >= 3
    spool.close()
    again, _ = open_spool(tmp_path, max_bytes=1 << 20)
    assert replay_records(again) == expected
    again.close()


def test_a_restart_inside_a_record_keeps_its_kind_and_topic(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    spool.append([b"%d" % i for i in range(5)], kind=KIND_MESSAGES, topic="t-a")
    spool.peek_record()
    spool.consume(2)
    record = spool.peek_record()
    assert record is not None
    assert (record.events, record.kind, record.topic) == ([b"2", b"3", b"4"], KIND_MESSAGES, "t-a")
    assert spool.peek() == [b"2", b"3", b"4"]
    spool.close()
    again, _ = open_spool(tmp_path)
    assert replay_records(again) == [([b"2", b"3", b"4"], KIND_MESSAGES, "t-a")]
    again.close()


def test_a_maximal_record_with_the_longest_topic_stays_within_a_quarter_segment(
    tmp_path: Path,
) -> None:
    spool, _ = open_spool(tmp_path, max_bytes=1 << 20)  # 128 KiB segments
    quarter = spool.segment_max_bytes // RECORDS_PER_SEGMENT
    events = [b"e" * 96] * ((quarter - 7) // 100)  # the most one record takes for topic ""
    spool.append(events, KIND_MESSAGES, LONGEST_TOPIC)
    spool.close()
    (name,) = segment_files(tmp_path)
    data = (tmp_path / name).read_bytes()
    found = list(records.scan(data, records.HEADER_BYTES))
    assert len(found) == 2
    for record in found:
        assert isinstance(record, records.Record)
        assert record.topic == LONGEST_TOPIC
        assert record.end - record.offset - records.RECORD_HEAD_BYTES <= quarter
    again, _ = open_spool(tmp_path, max_bytes=1 << 20)
    assert replay_all(again) == events
    again.close()


def test_a_damaged_topic_is_caught_by_the_crc_and_only_its_record_lost(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for topic in ("t-a", "t-b", "t-c"):
        spool.append([topic.encode()] * 2, KIND_MESSAGES, topic)
    spool.close()
    (name,) = segment_files(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    second = data.find(b"t-b", records.HEADER_BYTES)  # its topic, not its events
    data[second + 2] = ord("x")  # t-x: a topic as plausible as the one written
    (tmp_path / name).write_bytes(bytes(data))
    again, _ = open_spool(tmp_path)
    assert (again.events, again.corrupt_records) == (4, 1)
    assert replay_records(again) == [
        ([b"t-a"] * 2, KIND_MESSAGES, "t-a"),
        ([b"t-c"] * 2, KIND_MESSAGES, "t-c"),
    ]
    again.close()


def test_a_topic_damaged_after_startup_drops_its_record_at_replay(tmp_path: Path) -> None:
    spool, stats = open_spool(tmp_path)
    spool.append([b"1"], KIND_MESSAGES, "t-a")
    spool.append([b"2", b"3"], KIND_MESSAGES, "t-b")
    (name,) = segment_files(tmp_path)
    with open(tmp_path / name, "r+b") as fh:  # bit rot after the write
        data = fh.read()
        fh.seek(data.rindex(b"t-b") + 2)
        fh.write(b"x")
    assert replay_records(spool) == [([b"1"], KIND_MESSAGES, "t-a")]
    assert (spool.events, stats.dropped[Drop.SPOOL_CORRUPT], spool.corrupt_records) == (0, 2, 1)
    spool.close()


# -------------------------------------------------- segments written by version 1


def test_a_v1_segment_is_replayed_as_data_for_the_default_topic(tmp_path: Path) -> None:
    (tmp_path / SEG0).write_bytes(v1_segment([b'{"a":1}', b'{"b":2}'], [b'{"c":3}']))
    spool, stats = open_spool(tmp_path)
    assert (spool.events, stats.spool_recovered, spool.corrupt_records) == (3, 3, 0)
    assert replay_records(spool) == [
        ([b'{"a":1}', b'{"b":2}'], KIND_DATA, ""),
        ([b'{"c":3}'], KIND_DATA, ""),
    ]
    assert segment_files(tmp_path) == []
    spool.close()


def test_a_v1_segment_then_v2_appends_replay_in_order(tmp_path: Path) -> None:
    old = v1_segment([b"old-1"], [b"old-2", b"old-3"])
    (tmp_path / SEG0).write_bytes(old)
    spool, _ = open_spool(tmp_path)
    spool.append([b"new-1"])
    spool.append([b"body"], KIND_MESSAGES, "t-a")
    spool.close()
    # The v1 segment was not appended to: the new records are in a v2 segment.
    assert (tmp_path / SEG0).read_bytes() == old
    (_, new) = segment_files(tmp_path)
    assert (tmp_path / new).read_bytes()[:12] == b"INGSPOOL\x02\x00\x00\x00"
    again, _ = open_spool(tmp_path)
    assert replay_records(again) == [
        ([b"old-1"], KIND_DATA, ""),
        ([b"old-2", b"old-3"], KIND_DATA, ""),
        ([b"new-1"], KIND_DATA, ""),
        ([b"body"], KIND_MESSAGES, "t-a"),
    ]
    again.close()


def test_a_restart_inside_a_v1_record_resumes_after_what_was_taken(tmp_path: Path) -> None:
    (tmp_path / SEG0).write_bytes(v1_segment([b"a", b"b", b"c"], [b"d"]))
    spool, _ = open_spool(tmp_path)
    spool.peek()
    spool.consume(2)
    spool.close()
    again, _ = open_spool(tmp_path)
    assert replay_records(again) == [([b"c"], KIND_DATA, ""), ([b"d"], KIND_DATA, "")]
    again.close()


def test_damage_in_a_v1_segment_loses_only_that_record(tmp_path: Path) -> None:
    data = bytearray(v1_segment([b"a"], [b"b"], [b"c"]))
    data[12 + len(v1_record([b"a"])) + 20] ^= 0x55  # the second record's event
    (tmp_path / SEG0).write_bytes(bytes(data))
    spool, _ = open_spool(tmp_path)
    assert (spool.events, spool.corrupt_records) == (2, 1)
    assert replay_all(spool) == [b"a", b"c"]
    spool.close()


@pytest.mark.parametrize("version", [0, 3])
def test_a_segment_of_a_version_not_read_is_set_aside(tmp_path: Path, version: int) -> None:
    segment = b"INGSPOOL" + struct.pack("<I", version) + v1_record([b"{}"])
    (tmp_path / SEG0).write_bytes(segment)
    spool, _ = open_spool(tmp_path)
    assert (spool.events, spool.corrupt_records) == (0, 1)
    assert (tmp_path / f"{SEG0}.corrupt").read_bytes() == segment
    spool.close()
