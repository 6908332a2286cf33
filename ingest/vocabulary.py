"""The words ingest counts and answers with, in one place.

Every reason a metric is labelled with, every fsync policy and every exit
code is a member here; the modules that count or decide import them, and
/metrics iterates these enums, so a reason added here is exported (at 0)
from the start and one counted anywhere cannot be missing from the list.

Members are ``StrEnum`` (``IntEnum`` for exit codes): each *is* its text,
hashes and compares like it, so counters keyed by members and by plain
strings are the same counters, and labels print as the text.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Reject(StrEnum):
    """Events refused as invalid input, never forwarded
    (``ingest_events_rejected_total{reason}``)."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_OBJECT = "not_object"
    TOO_LARGE = "too_large"  # over --max-datagram-bytes, or a GELF message over --max-event-bytes
    SOURCE_DENIED = "source_denied"  # a UDP sender outside --udp-allow (never decoded)
    SENDER_DENIED = "sender_denied"  # a unix sender outside --unix-allow-uid (never decoded)
    FORMAT_DISABLED = "format_disabled"  # a format --input-formats leaves out
    INVALID_GELF = "invalid_gelf"
    GELF_INCOMPLETE = "gelf_incomplete"
    GELF_PENDING_FULL = "gelf_pending_full"
    GELF_TOO_MANY_CHUNKS = "gelf_too_many_chunks"
    GELF_INVALID_CHUNK = "gelf_invalid_chunk"
    INVALID_SYSLOG = "invalid_syslog"
    INVALID_STATSD = "invalid_statsd"
    UNSUPPORTED_STATSD = "unsupported_statsd"
    DECODED_TOO_LARGE = "decoded_too_large"  # past what one datagram may decode to (1 MiB)


class Ignore(StrEnum):
    """Datagrams without an event (``ingest_datagrams_ignored_total{reason}``)."""

    EMPTY = "empty"  # no non-blank line
    GELF_DUPLICATE_CHUNK = "gelf_duplicate_chunk"
    GELF_LATE_CHUNK = "gelf_late_chunk"


class Drop(StrEnum):
    """Accepted events lost (``ingest_events_dropped_total{reason}``)."""

    QUEUE_FULL = "queue_full"  # the memory queue is full and there is no spool
    INVALID_MESSAGE = "invalid_message"  # Pub/Sub said INVALID_ARGUMENT for it alone
    SHUTDOWN = "shutdown"  # still unpublished when the drain deadline passed
    PUBLISHER_CRASHED = "publisher_crashed"  # held by a publisher that failed (a bug)
    SPOOL_FULL = "spool_full"  # --spool-max-bytes reached
    SPOOL_ERROR = "spool_error"  # a write failed (disk full, I/O error)
    SPOOL_UNWRITABLE = "spool_unwritable"  # no segment could be created
    SPOOL_CORRUPT = "spool_corrupt"  # written this run, unreadable at replay


class Skip(StrEnum):
    """Attributes (or ordering keys) left off a message that is still
    published (``ingest_attributes_skipped_total{reason}``)."""

    VALUE_TOO_LONG = "value_too_long"  # over Pub/Sub's 1,024 bytes
    NOT_SCALAR = "not_scalar"  # an object or an array
    ORDERING_KEY_TOO_LONG = "ordering_key_too_long"  # over Pub/Sub's 1,024 bytes


class Fsync(StrEnum):
    """When the spool fsyncs (``--spool-fsync``); the first is the default."""

    ROLL = "roll"  # each segment roll and shutdown
    ALWAYS = "always"  # every record
    NEVER = "never"


class Exit(IntEnum):
    """Exit codes of ``ingest serve`` and ``ingest check-config``."""

    OK = 0  # stopped cleanly; everything accepted was published
    FAILURE = 1  # a task crashed at runtime (a bug: the traceback is logged)
    CONFIG = 2  # a bad setting, an address in use, a missing topic, ...
    DRAIN_INCOMPLETE = 3  # stopped, but events were dropped or left unconfirmed
    FORCED = 130  # a second SIGINT: stopped at once


class SendExit(IntEnum):
    """Exit codes of ``ingest send``: whether trying again can help."""

    OK = 0
    UNREACHABLE = 1  # nothing takes the datagrams now; trying again later may work
    INVALID = 2  # the event or the target is wrong; trying again will not help
    DENIED = 4  # the target is there, but this user (or the network) may not send to it
