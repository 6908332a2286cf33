"""The spool's segment set: the segment files in the directory, oldest first,
and the totals over them. The writer (writer.py) adds the newest and grows
it; the reader (reader.py) takes events out of the oldest and retires it.
Both work on this one object, so neither needs the other to know what is on
disk, and the totals stay right whichever of them moved.

It owns the names (``seg-NNNNNNNNNNNN.spool``, numbered in the order written,
never reused: the next number is past every segment found at startup), and
what startup does with the segments an earlier run left: scan each from the
cursor on, discard what holds nothing left to replay, set aside what cannot be
a segment.

Trust: the daemon may run as root, so every name is opened relative to the
directory's fd, never through a symlink and never unless it is a regular file
(``files.open_regular``). What looks like a segment but cannot be one (not a
regular file, larger than the format allows, a header this ingest does not
read) is set aside as NAME.corrupt, or NAME.corrupt.N when that is taken, and
counted in ``corrupt_records``; it is never replayed or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ingest.spool import records
from ingest.spool.files import SAFE_FLAGS, explain, irregular, open_regular, read_all

log = logging.getLogger(__name__)

SET_ASIDE_NAMES = 100  # NAME.corrupt, NAME.corrupt.1 ... before leaving it in place

_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.spool$")
# A segment's replacement that puts events ahead of it (store.Spool.prepend):
# written under FRONT_PARTIAL, renamed seg-N.front once complete and synced,
# then renamed over seg-N.spool. A complete one found at startup is
# installed then; a partial one is removed.
FRONT_PARTIAL = "front.partial"
_FRONT_RE = re.compile(r"^seg-(\d{12})\.front$")
# What startup reports of each record it finds to replay: kind, topic, events.
RecordSeen = Callable[[int, str, list[bytes]], None]


def segment_name(seq: int) -> str:
    return f"seg-{seq:012d}.spool"


def front_name(seq: int) -> str:
    return f"seg-{seq:012d}.front"


@dataclass(slots=True)
class Segment:
    seq: int
    name: str  # in the spool directory
    size: int  # bytes in the file
    events: int  # events in it not yet replayed
    damage_counted: bool = False  # the startup scan already counted its damage
    # Of its header: how its records are read. Only new segments are written
    # (one left by an earlier run is never reopened), so all are VERSION but
    # those found at startup.
    version: int = records.VERSION


class SegmentSet:
    """The segments of the spool directory open as ``dir_fd`` (named
    ``directory`` in log lines), oldest first; the newest may be the one
    being written. ``events`` and ``bytes`` are their totals, kept as they
    change (an append's bound check reads ``bytes`` every time)."""

    def __init__(self, dir_fd: int, directory: str) -> None:
        self.dir_fd = dir_fd
        self.directory = directory
        self.events = 0  # not yet replayed
        self.bytes = 0  # of segment files
        self.corrupt_records = 0  # damaged records, and files set aside
        self.next_seq = 0
        self._segments: list[Segment] = []

    def __len__(self) -> int:
        return len(self._segments)

    def oldest(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    # -------------------------------------------------------------- startup
    def load(self, cursor: records.Cursor | None, seen: RecordSeen | None = None) -> None:
        """Take in the segments an earlier run left: those the cursor has
        passed are removed, the rest scanned from the cursor on. ``seen`` is
        told each record's events not yet handed on, oldest first."""
        seqs = sorted(
            int(m.group(1)) for name in os.listdir(self.dir_fd) if (m := _SEGMENT_RE.match(name))
        )
        self.next_seq = seqs[-1] + 1 if seqs else 0
        for seq in seqs:
            if cursor is not None and seq < cursor.seq:
                self._discard(segment_name(seq))
                continue
            start, taken = 0, 0
            if cursor is not None and seq == cursor.seq:
                start, taken = cursor.offset, cursor.taken
            segment = self._scan_existing(seq, max(start, records.HEADER_BYTES), seen, taken)
            if segment is not None:
                self.add(segment)

    def recover_front(self) -> int | None:
        """Before ``load``: finish what a stop that put events ahead of the
        oldest segment left undone. A complete replacement (seg-N.front)
        takes the segment's name, and its number is returned: replay must
        start at its first record. A partial one is removed (what it held
        is lost, as at a crash before a stop spools anything)."""
        names = os.listdir(self.dir_fd)
        if FRONT_PARTIAL in names:
            log.warning(
                "spool %s: removing %s, left unfinished by an interrupted stop",
                self.directory,
                FRONT_PARTIAL,
            )
            self._discard(FRONT_PARTIAL)
        fronts = []
        for seq in sorted(int(m.group(1)) for name in names if (m := _FRONT_RE.match(name))):
            try:
                os.rename(
                    front_name(seq),
                    segment_name(seq),
                    src_dir_fd=self.dir_fd,
                    dst_dir_fd=self.dir_fd,
                )
            except OSError as exc:
                log.error(
                    "spool %s: cannot install it: %s", self.path(front_name(seq)), exc.strerror
                )
                continue
            log.info("spool %s: installed as %s", self.path(front_name(seq)), segment_name(seq))
            fronts.append(seq)
        if fronts:
            self.sync()
        return fronts[0] if fronts else None

    def _scan_existing(
        self, seq: int, start: int, seen: RecordSeen | None = None, taken: int = 0
    ) -> Segment | None:
        name = segment_name(seq)
        try:
            fd = open_regular(self.dir_fd, name, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                data = read_all(fd, size) if size <= records.MAX_SEGMENT_BYTES else b""
            finally:
                os.close(fd)
        except OSError as exc:
            self._set_aside(name, explain(exc))
            return None
        if size > records.MAX_SEGMENT_BYTES:
            self._set_aside(name, f"{size} bytes, larger than any segment; not read")
            return None
        if not data:  # a crash between creating it and writing its header
            self._discard(name)
            return None
        try:
            version = records.check_header(data)
        except records.FormatError as exc:
            self._set_aside(name, str(exc))
            return None
        events = 0
        damage = 0
        for item in records.scan(data, start, version=version):
            if isinstance(item, records.Record):
                events += len(item.events)
                if seen is not None:
                    # The record at the cursor: its first ``taken`` were handed on.
                    left = item.events[taken:] if taken and item.offset == start else item.events
                    if left:
                        seen(item.kind, item.topic, left)
            else:
                damage += 1
                log.warning(
                    "spool %s: %d damaged bytes at offset %d skipped (torn write or corruption)",
                    self.path(name),
                    item.end - item.offset,
                    item.offset,
                )
        self.corrupt_records += damage
        if not events:
            self._discard(name)
            return None
        return Segment(seq, name, len(data), events, bool(damage), version)

    def _discard(self, name: str) -> None:
        """Remove a segment with nothing left to replay (the cursor passed it,
        or it holds no valid record); set it aside if it is no regular file."""
        try:
            problem = irregular(os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_mode)
            if problem is not None:
                self._set_aside(name, problem.reason)
            else:
                os.unlink(name, dir_fd=self.dir_fd)
        except OSError as exc:
            log.warning("spool %s: cannot remove it: %s", self.path(name), exc.strerror)

    def _set_aside(self, name: str, reason: str) -> None:
        """Keep what cannot be replayed for a look, under a name no segment
        has: NAME.corrupt, or NAME.corrupt.N when that is taken. Counted."""
        self.corrupt_records += 1
        try:
            target = self._unused(f"{name}.corrupt")
            os.rename(name, target, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            log.error("spool %s: %s; left in place (%s)", self.path(name), reason, exc.strerror)
            return
        log.error("spool %s: %s; set aside as %s", self.path(name), reason, target)

    def _unused(self, name: str) -> str:
        """``name``, or ``name``.N for the first N that does not exist (rename()
        would replace what is there)."""
        for n in range(SET_ASIDE_NAMES):
            candidate = f"{name}.{n}" if n else name
            try:
                os.stat(candidate, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return candidate
        raise FileExistsError(errno.EEXIST, f"{name} to {name}.{SET_ASIDE_NAMES - 1} all exist")

    # ------------------------------------------------------ for the writer
    def create_next(self) -> tuple[int, Segment]:
        """Create the next segment's file, exclusively (never one that exists,
        never through a symlink), 0600, for appending: its write fd, which is
        the caller's, and its Segment (empty, not yet in the set: ``add`` it
        once its header is written). Its number is used up once the file
        exists, whatever happens next. OSError when it cannot be created."""
        seq = self.next_seq
        name = segment_name(seq)
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | SAFE_FLAGS,
            0o600,
            dir_fd=self.dir_fd,
        )
        self.next_seq += 1
        return fd, Segment(seq, name, 0, 0)

    def sync(self) -> None:
        """fsync the directory: a segment created or removed stays so after a
        power cut."""
        os.fsync(self.dir_fd)

    def add(self, segment: Segment) -> None:
        """``segment`` is the newest."""
        self._segments.append(segment)
        self.bytes += segment.size
        self.events += segment.events

    def write_front(self, seq: int, framed: list[bytes], *, sync: bool) -> int:
        """Write the replacement of segment ``seq`` holding ``framed``
        (encoded, in order) as seg-N.front: complete (synced when ``sync``)
        before it has that name. Its size; OSError when it cannot be
        written (nothing left behind but, at worst, FRONT_PARTIAL)."""
        with contextlib.suppress(FileNotFoundError):  # an earlier failed attempt's
            os.unlink(FRONT_PARTIAL, dir_fd=self.dir_fd)
        fd = os.open(
            FRONT_PARTIAL,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_FLAGS,
            0o600,
            dir_fd=self.dir_fd,
        )
        size = 0
        try:
            for data in (records.HEADER, *framed):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(data)
            if sync:
                os.fdatasync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(FRONT_PARTIAL, dir_fd=self.dir_fd)
            raise
        os.close(fd)
        os.rename(FRONT_PARTIAL, front_name(seq), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        if sync:
            self.sync()
        return size

    def install_front(self, segment: Segment, size: int, events: int, *, sync: bool) -> None:
        """``segment``'s replacement (``write_front``: ``size`` bytes holding
        ``events``) takes its name and its place. OSError when the rename
        fails (the next startup installs it)."""
        os.rename(
            front_name(segment.seq), segment.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd
        )
        if sync:
            self.sync()
        self.bytes += size - segment.size
        self.events += events - segment.events
        segment.size = size
        segment.events = events
        segment.version = records.VERSION
        segment.damage_counted = False

    def wrote(self, segment: Segment, size: int, events: int) -> None:
        """A record of ``size`` bytes holding ``events`` was appended to ``segment``."""
        segment.size += size
        segment.events += events
        self.bytes += size
        self.events += events

    # ------------------------------------------------------ for the reader
    def took(self, segment: Segment, events: int) -> None:
        """``events`` of ``segment`` were handed on (or passed at startup)."""
        segment.events -= events
        self.events -= events

    def count_damage(self) -> None:
        self.corrupt_records += 1

    def pop_oldest(self) -> Segment:
        """The oldest segment, off the set and its totals (what it still
        counts was lost to damage); its file stays until ``delete``."""
        segment = self._segments.pop(0)
        self.events -= segment.events
        self.bytes -= segment.size
        return segment

    def delete(self, segment: Segment) -> None:
        """Remove ``segment``'s file. OSError as os.unlink raises it."""
        os.unlink(segment.name, dir_fd=self.dir_fd)
