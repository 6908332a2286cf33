"""The disk spool: framing (hypothesis), segments, cursor, lock, damage, errors.

No event loop and no sockets: the spool is state plus files."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import ConfigError
from ingest.spool import Spool, records
from ingest.stats import Stats
from ingest.vocabulary import Drop

# Accepted events are valid UTF-8 (codec.py), so they never contain 0xFF.
text_events = st.lists(st.text(min_size=0, max_size=40).map(str.encode), min_size=1, max_size=8)


@given(text_events)
def test_record_round_trip(events: list[bytes]) -> None:
    data = records.encode_record(events)
    record = records.record_at(data, 0)
    assert record is not None
    assert record.events == events
    assert record.end == len(data)


@given(text_events, st.data())
def test_any_truncation_is_detected(events: list[bytes], data: st.DataObject) -> None:
    encoded = records.encode_record(events)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert records.record_at(encoded[:cut], 0) is None
    items = list(records.scan(encoded[:cut], 0))
    assert all(isinstance(item, records.Damage) for item in items)


@settings(max_examples=300, deadline=None)
@given(st.lists(text_events, min_size=1, max_size=5), st.data())
def test_single_byte_damage_never_yields_a_wrong_event(
    batches: list[list[bytes]], data: st.DataObject
) -> None:
    framed = [records.encode_record(events) for events in batches]
    buf = bytearray(b"".join(framed))
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] ^= data.draw(st.integers(1, 255))
    found = [item for item in records.scan(bytes(buf), 0)]
    good = [item.events for item in found if isinstance(item, records.Record)]
    # The damaged record is gone, every other one is intact and in order.
    damaged = next(i for i, end in enumerate(_ends(framed)) if pos < end)
    assert good == [events for i, events in enumerate(batches) if i != damaged]
    assert sum(isinstance(item, records.Damage) for item in found) == 1


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=40), st.integers(8, 200))
def test_split_keeps_order_and_the_bound(events: list[bytes], max_bytes: int) -> None:
    runs = list(records.split(events, max_bytes))
    assert [e for run in runs for e in run] == events
    for run in runs:
        payload = 4 + sum(4 + len(e) for e in run)
        assert run and (payload <= max_bytes or len(run) == 1)


def _ends(records: list[bytes]) -> list[int]:
    out, total = [], 0
    for record in records:
        total += len(record)
        out.append(total)
    return out


def test_header_magic_and_version() -> None:
    records.check_header(records.HEADER)
    with pytest.raises(records.FormatError, match="magic"):
        records.check_header(b"NOTSPOOL\x01\x00\x00\x00")
    with pytest.raises(records.FormatError, match="version 3; this ingest reads 1 and 2"):
        records.check_header(records.MAGIC + b"\x03\x00\x00\x00")


# ---------------------------------------------------------------- the spool


def open_spool(path: Path, max_bytes: int = 1 << 20, fsync: str = "roll") -> tuple[Spool, Stats]:
    stats = Stats()
    return Spool.open(str(path), max_bytes, fsync, stats), stats


def replay_all(spool: Spool) -> list[bytes]:
    out: list[bytes] = []
    while (events := spool.peek()) is not None:
        out += events
        spool.consume()
    return out


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("seg-"))


def test_directory_is_created_0700_and_events_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a" / "spool"
    spool, stats = open_spool(path)
    assert path.stat().st_mode & 0o777 == 0o700
    spool.append([b'{"a":1}', b'{"b":2}'])
    spool.append([b'{"c":3}'])
    assert (spool.events, stats.spooled) == (3, 3)
    assert replay_all(spool) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert (spool.events, stats.replayed) == (0, 3)
    assert segment_files(path) == []  # replayed segments are deleted
    spool.close()


def test_segments_roll_and_replayed_ones_are_deleted(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path, max_bytes=1 << 20)  # 128 KiB segments
    event = b'{"x":"' + b"y" * 1000 + b'"}'
    for _ in range(400):  # ~400 KB
        spool.append([event])
    assert spool.segments >= 3
    assert len(segment_files(tmp_path)) == spool.segments
    spool.peek()
    before = len(segment_files(tmp_path))
    for _ in range(300):
        spool.peek()
        spool.consume()
    assert len(segment_files(tmp_path)) < before
    assert spool.events == 100
    spool.close()


def test_a_restart_resumes_at_the_cursor_without_resending(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for i in range(10):
        spool.append([f'{{"i":{i}}}'.encode()])
    for _ in range(4):
        spool.peek()
        spool.consume()
    spool.close()
    again, stats = open_spool(tmp_path)
    assert (again.events, stats.spool_recovered) == (6, 6)
    assert replay_all(again) == [f'{{"i":{i}}}'.encode() for i in range(4, 10)]
    again.close()


def test_full_spool_drops_and_counts(tmp_path: Path) -> None:
    spool, stats = open_spool(tmp_path, max_bytes=100_000)
    event = b'{"x":"' + b"y" * 990 + b'"}'
    for _ in range(200):
        spool.append([event])
    assert stats.dropped[Drop.SPOOL_FULL] > 0
    assert (
        spool.events + stats.dropped[Drop.SPOOL_FULL]
        == 200
        == stats.spooled + stats.dropped[Drop.SPOOL_FULL]
    )
    assert spool.bytes <= 100_000
    spool.close()


def test_a_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for i in range(5):
        spool.append([f'{{"i":{i}}}'.encode()])
    spool.close()
    (segment,) = segment_files(tmp_path)
    with open(tmp_path / segment, "r+b") as fh:
        fh.truncate(os.path.getsize(tmp_path / segment) - 3)  # power cut mid-record
    again, _ = open_spool(tmp_path)
    assert (again.events, again.corrupt_records) == (4, 1)
    assert replay_all(again) == [f'{{"i":{i}}}'.encode() for i in range(4)]
    assert again.corrupt_records == 1  # counted once, not again at replay
    again.close()


def test_damage_in_the_middle_loses_only_that_record(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for i in range(5):
        spool.append([f'{{"i":{i}}}'.encode()] * 3)
    spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray((tmp_path / segment).read_bytes())
    second = data.find(records.RECORD_MAGIC, records.HEADER_BYTES + 1)
    data[second + 20] ^= 0x55
    (tmp_path / segment).write_bytes(bytes(data))
    again, _ = open_spool(tmp_path)
    assert (again.events, again.corrupt_records) == (12, 1)
    assert replay_all(again) == [f'{{"i":{i}}}'.encode() for i in (0, 2, 3, 4) for _ in range(3)]
    again.close()


def test_damage_found_at_replay_is_counted_as_dropped(tmp_path: Path) -> None:
    spool, stats = open_spool(tmp_path)
    spool.append([b'{"a":1}'])
    spool.append([b'{"b":2}', b'{"c":3}'])
    (segment,) = segment_files(tmp_path)
    with open(tmp_path / segment, "r+b") as fh:  # bit rot after the write
        fh.seek(-2, os.SEEK_END)
        fh.write(b"!!")
    assert replay_all(spool) == [b'{"a":1}']
    assert (spool.events, stats.dropped["spool_corrupt"], spool.corrupt_records) == (0, 2, 1)
    spool.close()


def test_a_foreign_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "seg-000000000000.spool").write_bytes(b"hello, not a spool")
    spool, _ = open_spool(tmp_path)
    assert (spool.events, spool.corrupt_records) == (0, 1)
    assert (tmp_path / "seg-000000000000.spool.corrupt").exists()
    spool.append([b"{}"])
    assert replay_all(spool) == [b"{}"]
    spool.close()


def test_a_damaged_cursor_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for i in range(3):
        spool.append([f'{{"i":{i}}}'.encode()])
    spool.peek()
    spool.consume()
    spool.close()
    (tmp_path / "cursor").write_bytes(b"\x00" * 20)
    again, _ = open_spool(tmp_path)
    assert again.events == 3  # duplicates, never loss
    again.close()


def test_startup_errors_name_the_flag(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"--spool-dir: .*file/spool: cannot use"):
        open_spool(tmp_path / "file" / "spool")


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Nothing can be created in ``path`` meanwhile: mode 0500, and as root,
    whom modes do not stop, with the effective uid of nobody as well."""
    path.chmod(0o500)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
        path.chmod(0o700)


def test_an_unwritable_directory_degrades_to_counted_drops(tmp_path: Path) -> None:
    spool, stats = open_spool(tmp_path)
    spool.append([b"{}"])
    spool._close_active()  # as at a segment roll: the next append needs a new file
    with unwritable(tmp_path):
        spool.append([b"{}", b"{}"])
        assert stats.dropped[Drop.SPOOL_UNWRITABLE] == 2
        assert spool.problem is not None
        assert spool.events == 1
        spool.recheck()  # still unwritable: the problem stands
        assert spool.problem is not None
    # Writable again, with no overflow to try a write: the housekeeping recheck clears it.
    spool.recheck()
    assert spool.problem is None
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".probe")]
    spool.append([b"{}"])
    assert spool.events == 2
    spool.close()


def test_the_directory_in_use_is_the_one_checked_at_open(tmp_path: Path) -> None:
    # Names are opened relative to the directory's fd: renaming the path (and
    # putting something else there) does not move the spool's writes.
    spool, _ = open_spool(tmp_path / "spool")
    (tmp_path / "spool").rename(tmp_path / "moved")
    (tmp_path / "spool").mkdir(mode=0o777)
    spool.append([b"{}"])
    assert (spool.events, spool.problem) == (1, None)
    assert segment_files(tmp_path / "moved") and not segment_files(tmp_path / "spool")
    spool.close()


# ------------------------------------------------- replay progress and the cursor


def test_a_restart_resumes_inside_a_partly_consumed_record(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    spool.append([b"%d" % i for i in range(10)])  # one record
    spool.peek()
    spool.consume(4)
    spool.close()
    again, stats = open_spool(tmp_path)
    assert (again.events, stats.spool_recovered) == (6, 6)
    assert replay_all(again) == [b"%d" % i for i in range(4, 10)]
    again.close()


def test_a_cursor_in_the_earlier_format_is_read(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    for i in range(3):
        spool.append([b"%d" % i])
    spool.close()
    (segment,) = segment_files(tmp_path)
    seq = int(segment[4:16])
    second = records.HEADER_BYTES + len(records.encode_record([b"0"]))
    head = struct.pack("<QQ", seq, second)  # segment, offset, crc: no count of events taken
    (tmp_path / "cursor").write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    again, _ = open_spool(tmp_path)
    assert replay_all(again) == [b"1", b"2"]
    again.close()


def test_a_large_batch_is_cut_into_records_no_larger_than_a_segment(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path, max_bytes=1 << 20)  # 128 KiB segments
    events = [b'{"i":%06d}' % i for i in range(30_000)]  # 360 KB in one append
    spool.append(events)
    assert spool.segments >= 3
    for name in segment_files(tmp_path):
        assert (tmp_path / name).stat().st_size <= spool.segment_max_bytes
    spool.close()
    again, _ = open_spool(tmp_path, max_bytes=1 << 20)
    assert replay_all(again) == events
    again.close()
