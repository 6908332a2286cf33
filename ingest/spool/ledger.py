"""The spool's ledger: the cursor file, which says where replay resumes
(the segment, the offset of the record being replayed, and how many of its
events were already handed to the pipeline). Written in place with one
pwrite, so SIGKILL loses nothing; fsynced as the fsync policy says, so a
power cut can only move it back (events repeated, never lost)."""

from __future__ import annotations

import logging
import os

from ingest.spool import records

log = logging.getLogger(__name__)


class Ledger:
    """The open cursor file (``fd``, owned from here on)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self) -> records.Cursor | None:
        """The saved cursor; None for a new spool, or a damaged cursor (then
        emptied: replay starts from the oldest segment, repeating events)."""
        raw = os.pread(self.fd, records.CURSOR_BYTES + 1, 0)
        if not raw:
            return None
        cursor = records.decode_cursor(raw)
        if cursor is None:
            log.warning("spool cursor damaged; replaying from the oldest segment (duplicates)")
            os.ftruncate(self.fd, 0)
        return cursor

    def save(self, cursor: records.Cursor, *, sync: bool) -> None:
        """Write ``cursor`` (the page cache), and fsync it when ``sync``.
        Raises OSError: a stale cursor replays records again, so the caller
        logs it and goes on."""
        os.pwrite(self.fd, records.encode_cursor(cursor), 0)
        if sync:
            os.fsync(self.fd)

    def close(self, *, sync: bool) -> None:
        if sync:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                log.warning("spool cursor not synced at close: %s", exc)
        os.close(self.fd)
