"""The words ingest counts and answers with, in one place.

Every reason a metric is labelled with, every fsync and reload policy and
every exit code is a member here; the modules that count or decide import
them, and /metrics iterates these enums, so a reason added here is exported
(at 0) from the start and one counted anywhere cannot be missing from the
list.

Members are ``StrEnum`` (``IntEnum`` for exit codes): each *is* its text,
hashes and compares like it, so counters keyed by members and by plain
strings are the same counters, and labels print as the text. Each member is
written with its ``description``, the sentence the generated reference
(docs/reference/, ``python -m tools.docs``) and ``--help`` print for it.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Self


class Described(StrEnum):
    """A StrEnum whose members are written ``NAME = "text", "description"``."""

    description: str

    def __new__(cls, value: str, description: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member


class DescribedCode(IntEnum):
    """An IntEnum whose members are written ``NAME = code, "description"``."""

    description: str

    def __new__(cls, value: int, description: str) -> Self:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member


class Reject(Described):
    """Events refused as invalid input, never forwarded
    (``ingest_events_rejected_total{reason}``)."""

    INVALID_JSON = "invalid_json", "a line that is not JSON"
    INVALID_UTF8 = "invalid_utf8", "a line that is not UTF-8"
    NOT_OBJECT = "not_object", "JSON, but not an object (an array, a string, a number)"
    TOO_LARGE = (
        "too_large",
        "a datagram over --max-datagram-bytes, or a GELF message over --max-event-bytes",
    )
    SOURCE_DENIED = "source_denied", "a UDP sender outside --udp-allow (never decoded)"
    SENDER_DENIED = "sender_denied", "a unix sender outside --unix-allow-uid (never decoded)"
    FORMAT_DISABLED = "format_disabled", "a datagram in a format --input-formats leaves out"
    INVALID_GELF = (
        "invalid_gelf",
        "a GELF message that does not inflate or is not a GELF JSON object",
    )
    GELF_INCOMPLETE = (
        "gelf_incomplete",
        "a chunked GELF message whose chunks did not all arrive within 5 seconds of the first",
    )
    GELF_PENDING_FULL = (
        "gelf_pending_full",
        "a chunked GELF message evicted or refused: the reassembly memory bound was reached",
    )
    GELF_TOO_MANY_CHUNKS = (
        "gelf_too_many_chunks",
        "a chunked GELF message announcing more than 128 chunks",
    )
    GELF_INVALID_CHUNK = (
        "gelf_invalid_chunk",
        "a GELF chunk with a header too short to read, a sequence out of range, or a "
        "chunk count unlike its message's earlier chunks'",
    )
    INVALID_SYSLOG = (
        "invalid_syslog",
        "a syslog message without a valid PRI, or with a malformed header",
    )
    INVALID_STATSD = "invalid_statsd", "a statsd line that does not parse"
    UNSUPPORTED_STATSD = (
        "unsupported_statsd",
        "a well-formed statsd line of a metric type ingest does not know (such as etsy's kv)",
    )
    DECODED_TOO_LARGE = (
        "decoded_too_large",
        "past what one datagram may decode to (1 MiB of events)",
    )


class Ignore(Described):
    """Datagrams without an event (``ingest_datagrams_ignored_total{reason}``)."""

    EMPTY = "empty", "a datagram with no non-blank line"
    GELF_DUPLICATE_CHUNK = (
        "gelf_duplicate_chunk",
        "a GELF chunk whose sequence number its pending message already has",
    )
    GELF_LATE_CHUNK = (
        "gelf_late_chunk",
        "a GELF chunk of a message that ended (completed or abandoned) within the last 5 seconds",
    )


class Drop(Described):
    """Accepted events lost (``ingest_events_dropped_total{reason}``)."""

    QUEUE_FULL = "queue_full", "the memory queue is full and there is no spool"
    INVALID_MESSAGE = "invalid_message", "Pub/Sub answered INVALID_ARGUMENT for it alone"
    SHUTDOWN = "shutdown", "still unpublished when the drain deadline passed"
    PUBLISHER_CRASHED = "publisher_crashed", "held by a publisher that failed (a bug)"
    SPOOL_FULL = "spool_full", "--spool-max-bytes reached"
    SPOOL_ERROR = "spool_error", "a spool write failed (disk full, I/O error)"
    SPOOL_UNWRITABLE = "spool_unwritable", "no spool segment could be created"
    SPOOL_CORRUPT = "spool_corrupt", "written to the spool this run, unreadable at replay"


class Skip(Described):
    """Attributes (or ordering keys) left off a message that is still
    published (``ingest_attributes_skipped_total{reason}``)."""

    VALUE_TOO_LONG = "value_too_long", "an attribute value over Pub/Sub's 1,024 bytes"
    NOT_SCALAR = "not_scalar", "the event's field is an object or an array"
    ORDERING_KEY_TOO_LONG = (
        "ordering_key_too_long",
        "an ordering key over Pub/Sub's 1,024 bytes",
    )


class Fsync(Described):
    """When the spool fsyncs (``--spool-fsync``); the first is the default."""

    ROLL = "roll", "at each segment roll and at shutdown"
    ALWAYS = "always", "after every record"
    NEVER = "never", "the kernel writes back when it chooses"


class Reload(Described):
    """What a reload (SIGHUP) does with a changed setting (reload.py)."""

    LIVE = "live", "applied by a reload"
    DEPENDS = (
        "depends",
        "applied by a reload when the settings fixed at startup allow it; else kept "
        "until a restart, and the log says why",
    )
    RESTART = "restart", "kept until a restart; the log names it"


class Exit(DescribedCode):
    """Exit codes of ``ingest serve`` and ``ingest check-config``."""

    OK = (
        0,
        "stopped cleanly: what it held at shutdown was published or spooled "
        "(check-config: the settings are valid)",
    )
    FAILURE = 1, "a task crashed at runtime (a bug: the traceback is logged)"
    CONFIG = (
        2,
        "a bad setting or a startup error: an address in use, a missing topic, no "
        "credentials, ... (one line names the flag that fixes it)",
    )
    DRAIN_INCOMPLETE = (
        3,
        "stopped, but events were dropped at shutdown or left unconfirmed (maybe "
        "published, maybe not)",
    )
    FORCED = 130, "a second SIGINT: stopped at once"


class SendExit(DescribedCode):
    """Exit codes of ``ingest send``: whether trying again can help."""

    OK = 0, "every event was sent"
    UNREACHABLE = (
        1,
        "nothing takes the datagrams now (no socket, nothing listens, nobody reads); "
        "trying again later may work",
    )
    INVALID = (
        2,
        "the event or the target is wrong (invalid JSON, too large for a datagram, "
        "not a datagram socket); trying again will not help",
    )
    DENIED = 4, "the target is there, but this user (or the network) may not send to it"


class TapExit(DescribedCode):
    """Exit codes of ``ingest tap``."""

    OK = 0, "--limit lines printed, Ctrl-C, or stdout closed (a pipe to head)"
    FAILURE = (
        1,
        "nothing answers, the connection broke, the daemon closed the stream (it stops) "
        "or refused a tap for now (5xx: full of taps), or it went silent, not even a heartbeat",
    )
    USAGE = (
        2,
        "the daemon refused the request (4xx: a bad filter, or a daemon without /tap), or "
        "the URL is not an ingest tap",
    )
