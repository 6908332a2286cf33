"""The disk spool, in parts:

- ``store.Spool``: the one entry point, the policy that ties the parts
  together: the locked directory, opening and loading, the bounds, when the
  cursor is saved, the drops and the counts;
- ``segments.SegmentSet``: the segment files, oldest first, their names and
  totals, and what startup finds in them (scanned, discarded, set aside);
- ``writer.SegmentWriter``: the segment being appended to, the roll to the
  next, the fsync policy;
- ``reader.SegmentReader``: the oldest record and how much of it is taken,
  resynchronising after damage, retiring a segment read to its end;
- ``ledger.Ledger``: the cursor file, where replay resumes;
- ``records``: the on-disk format of segments, records and the cursor;
- ``files``: the directory's files, opened so that nobody else's file or
  symlink can be written through;

Feeding the spool back into the memory queue, paced against live traffic, is
the pipeline's (pipeline/replay.py): the spool knows nothing of the queue.
"""

from ingest.spool.files import check_directory
from ingest.spool.reader import PendingRecord
from ingest.spool.segments import SET_ASIDE_NAMES
from ingest.spool.store import DROP_REASONS, FSYNC_POLICIES, RECORDS_PER_SEGMENT, Spool

__all__ = [
    "DROP_REASONS",
    "FSYNC_POLICIES",
    "RECORDS_PER_SEGMENT",
    "SET_ASIDE_NAMES",
    "PendingRecord",
    "Spool",
    "check_directory",
]
