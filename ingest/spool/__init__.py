"""The disk spool, in parts:

- ``store.Spool``: the policy that ties the parts together: the locked
  directory, segments written (append) and read back (peek, consume), the
  bounds and the counts;
- ``ledger.Ledger``: the cursor file, where replay resumes;
- ``records``: the on-disk format of segments, records and the cursor;
- ``files``: the directory's files, opened so that nobody else's file or
  symlink can be written through;
- ``replay``: feeding the spool back into the memory queue, paced against
  live traffic (imported on its own: it needs the pipeline's modules).
"""

from ingest.spool.files import check_directory
from ingest.spool.store import (
    DROP_REASONS,
    FSYNC_POLICIES,
    RECORDS_PER_SEGMENT,
    SET_ASIDE_NAMES,
    SPOOL_CORRUPT,
    SPOOL_ERROR,
    SPOOL_FULL,
    SPOOL_UNWRITABLE,
    PendingRecord,
    Spool,
)

__all__ = [
    "DROP_REASONS",
    "FSYNC_POLICIES",
    "RECORDS_PER_SEGMENT",
    "SET_ASIDE_NAMES",
    "SPOOL_CORRUPT",
    "SPOOL_ERROR",
    "SPOOL_FULL",
    "SPOOL_UNWRITABLE",
    "PendingRecord",
    "Spool",
    "check_directory",
]
