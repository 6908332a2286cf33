"""The spool's parts on their own: the segment set, the writer and the reader
(store.Spool ties them; test_spool.py tests it whole). Real files in a tmp
directory, a hand-driven clock, and no Spool: what each part promises the
others."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.spool import records
from ingest.spool.reader import SegmentReader
from ingest.spool.segments import Segment, SegmentSet, segment_name
from ingest.spool.writer import REOPEN_RETRY_S, SegmentWriter, Unwritable

SEGMENT_BYTES = 4096


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def segments(tmp_path: Path) -> Iterator[SegmentSet]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield SegmentSet(fd, str(tmp_path))
    finally:
        os.close(fd)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def writer(segments: SegmentSet, clock: Clock) -> Iterator[SegmentWriter]:
    writer = SegmentWriter(segments, SEGMENT_BYTES, "roll", clock)
    yield writer
    writer.close()


def write(writer: SegmentWriter, *events: bytes) -> int:
    record = records.encode_record(list(events))
    writer.append(record, len(events))
    return len(record)


def events_in(path: Path) -> list[list[bytes]]:
    data = path.read_bytes()
    found = records.scan(data, records.HEADER_BYTES)
    return [item.events for item in found if isinstance(item, records.Record)]


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


class Retired:
    """The reader's ``retired`` callback as the policy would do it, minus the
    cursor: delete the file, remember the segment."""

    def __init__(self, segments: SegmentSet) -> None:
        self.segments = segments
        self.seen: list[Segment] = []

    def __call__(self, segment: Segment) -> None:
        self.seen.append(segment)
        self.segments.delete(segment)


def read_all(reader: SegmentReader) -> list[list[bytes]]:
    out = []
    while (record := reader.peek_record()) is not None:
        out.append(record.events)
        reader.consume(None)
    return out


# ------------------------------------------------------------------ the writer


def test_the_writer_rolls_before_a_record_would_pass_the_bound(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    event = b"e" * 1000
    sizes = [write(writer, event) for _ in range(5)]  # ~1 KiB records: 3 fit in 4 KiB
    assert files(tmp_path) == [segment_name(0), segment_name(1)]
    assert events_in(tmp_path / segment_name(0)) == [[event]] * 3
    assert events_in(tmp_path / segment_name(1)) == [[event]] * 2
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert (segments.bytes, segments.events, len(segments)) == (on_disk, 5, 2)
    assert on_disk == 2 * records.HEADER_BYTES + sum(sizes)


def test_a_record_larger_than_a_segment_goes_alone_into_a_new_one(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    write(writer, b"small")
    write(writer, b"x" * (2 * SEGMENT_BYTES))
    write(writer, b"after")
    assert [events_in(tmp_path / segment_name(n)) for n in range(3)] == [
        [[b"small"]],
        [[b"x" * (2 * SEGMENT_BYTES)]],
        [[b"after"]],
    ]
    assert segments.next_seq == 3


def test_a_failed_creation_is_not_retried_until_the_back_off_passes(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter, clock: Clock
) -> None:
    planted = tmp_path / segment_name(0)  # O_EXCL: never written through
    planted.write_bytes(b"someone else's")
    with pytest.raises(Unwritable) as failed:
        write(writer, b"a")
    assert failed.value.errno == errno.EEXIST
    planted.unlink()
    clock.now += REOPEN_RETRY_S / 2
    with pytest.raises(Unwritable) as again:  # not even tried
        write(writer, b"b")
    assert again.value.strerror == failed.value.strerror
    assert files(tmp_path) == [] and segments.next_seq == 0
    clock.now += REOPEN_RETRY_S / 2
    write(writer, b"c")
    assert events_in(tmp_path / segment_name(0)) == [[b"c"]]
    assert (segments.events, segments.next_seq) == (1, 1)


def test_retry_now_ends_the_back_off(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    (tmp_path / segment_name(0)).write_bytes(b"someone else's")
    with pytest.raises(Unwritable):
        write(writer, b"a")
    (tmp_path / segment_name(0)).unlink()
    writer.retry_now()
    write(writer, b"b")
    assert events_in(tmp_path / segment_name(0)) == [[b"b"]]


def test_release_closes_only_the_segment_being_written(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    write(writer, b"a")
    writer.close()
    write(writer, b"b")  # seg 1 is being written
    oldest = segments.oldest()
    assert oldest is not None and oldest.seq == 0
    writer.release(oldest)
    write(writer, b"c")  # still into seg 1
    assert events_in(tmp_path / segment_name(1)) == [[b"b"], [b"c"]]
    segments.pop_oldest()  # as the reader does once seg 0 is read
    newest = segments.oldest()
    assert newest is not None and newest.seq == 1
    writer.release(newest)
    write(writer, b"d")  # a new segment: the released one is never grown again
    assert events_in(tmp_path / segment_name(1)) == [[b"b"], [b"c"]]
    assert events_in(tmp_path / segment_name(2)) == [[b"d"]]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of a file fail with EFBIG (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_write_cuts_its_torn_tail_and_closes_the_segment(
    tmp_path: Path, segments: SegmentSet, clock: Clock
) -> None:
    writer = SegmentWriter(segments, 1 << 20, "roll", clock)
    write(writer, b"kept")
    before = (tmp_path / segment_name(0)).stat().st_size
    with file_size_limit(16 << 10), pytest.raises(OSError) as failed:
        write(writer, b"x" * (32 << 10))  # the first 16 KiB are written, then EFBIG
    assert not isinstance(failed.value, Unwritable)
    assert failed.value.errno == errno.EFBIG
    assert (tmp_path / segment_name(0)).stat().st_size == before
    assert (segments.bytes, segments.events) == (before, 1)
    write(writer, b"next")  # a closed segment is never reopened
    assert events_in(tmp_path / segment_name(0)) == [[b"kept"]]
    assert events_in(tmp_path / segment_name(1)) == [[b"next"]]
    writer.close()


# ------------------------------------------------------------------ the reader


@pytest.fixture
def retired(segments: SegmentSet) -> Retired:
    return Retired(segments)


@pytest.fixture
def reader(segments: SegmentSet, retired: Retired) -> SegmentReader:
    return SegmentReader(segments, retired)


def test_the_reader_replays_oldest_first_and_retires_each_segment_read(
    tmp_path: Path,
    segments: SegmentSet,
    writer: SegmentWriter,
    reader: SegmentReader,
    retired: Retired,
) -> None:
    batches = [[b"%d" % i * 500] * 3 for i in range(8)]  # ~1.5 KiB records
    for batch in batches:
        write(writer, *batch)
    assert len(segments) > 1
    assert read_all(reader) == batches
    assert [s.seq for s in retired.seen] == list(range(segments.next_seq))
    assert all(s.events == 0 for s in retired.seen)  # nothing lost
    assert (segments.events, segments.bytes, files(tmp_path)) == (0, 0, [])
    assert reader.position() == records.Cursor(segments.next_seq, records.HEADER_BYTES, 0)


def test_consume_takes_a_prefix_and_the_position_says_how_much(
    segments: SegmentSet, writer: SegmentWriter, reader: SegmentReader, retired: Retired
) -> None:
    write(writer, b"a", b"b", b"c")
    write(writer, b"d")
    assert reader.peek_record() is not None
    assert reader.consume(2) == (2, False)
    assert reader.position() == records.Cursor(0, records.HEADER_BYTES, 2)
    record = reader.peek_record()
    assert record is not None and record.events == [b"c"]
    assert reader.consume(5) == (1, False)  # no more than is left of it
    second = records.HEADER_BYTES + len(records.encode_record([b"a", b"b", b"c"]))
    assert reader.position() == records.Cursor(0, second, 0)
    assert segments.events == 1
    assert reader.peek_record() is not None
    assert reader.consume(None) == (1, True)  # the last of seg 0: retired
    assert [s.seq for s in retired.seen] == [0]


def test_a_new_reader_resumes_inside_a_record_from_the_cursor(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter, reader: SegmentReader
) -> None:
    write(writer, b"0", b"1", b"2", b"3")
    write(writer, b"4")
    writer.close()
    reader.peek_record()
    reader.consume(3)
    cursor = reader.position()
    again = SegmentSet(segments.dir_fd, str(tmp_path))  # as a restart finds them
    again.load(cursor)
    assert again.events == 5  # the scan counts from the record at the cursor
    resumed = SegmentReader(again, Retired(again))
    resumed.resume(cursor)
    assert again.events == 2
    assert read_all(resumed) == [[b"3"], [b"4"]]


def test_damage_is_skipped_once_counted_and_left_on_the_retired_segment(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter, reader: SegmentReader
) -> None:
    for batch in ([b"first"], [b"second", b"second"], [b"third"]):
        write(writer, *batch)
    path = tmp_path / segment_name(0)
    data = bytearray(path.read_bytes())
    data[data.find(b"second") + 2] ^= 0x55  # bit rot after the write
    path.write_bytes(bytes(data))
    lost: list[int] = []

    def retire(segment: Segment) -> None:
        lost.append(segment.events)
        segments.delete(segment)

    damaged = SegmentReader(segments, retire)
    assert read_all(damaged) == [[b"first"], [b"third"]]
    assert segments.corrupt_records == 1
    assert lost == [2]  # what the policy counts as dropped


def test_a_segment_whose_damage_the_startup_scan_counted_is_not_counted_again(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    write(writer, b"a")
    write(writer, b"b")
    writer.close()
    path = tmp_path / segment_name(0)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 2)  # a torn last record
    again = SegmentSet(segments.dir_fd, str(tmp_path))
    again.load(None)
    assert (again.events, again.corrupt_records) == (1, 1)
    assert read_all(SegmentReader(again, Retired(again))) == [[b"a"]]
    assert again.corrupt_records == 1


# ------------------------------------------------------------- the segment set


def test_loading_discards_what_the_cursor_passed_and_never_reuses_a_number(
    tmp_path: Path, segments: SegmentSet, writer: SegmentWriter
) -> None:
    for batch in ([b"a"], [b"b"], [b"c"]):
        write(writer, *batch)
        writer.close()  # one segment each
    (tmp_path / segment_name(2)).write_bytes(b"not a segment any more")
    again = SegmentSet(segments.dir_fd, str(tmp_path))
    again.load(records.Cursor(1, records.HEADER_BYTES, 0))
    assert (again.events, len(again), again.corrupt_records) == (1, 1, 1)
    assert files(tmp_path) == [segment_name(1), f"{segment_name(2)}.corrupt"]
    assert again.next_seq == 3  # past the one set aside too
    fd, segment = again.create_next()
    os.close(fd)
    assert segment.name == segment_name(3)
