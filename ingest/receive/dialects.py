"""Which dialect a datagram speaks, and turning it into events.

Every listener takes, by default, four formats (``--input-formats``), told
apart by their leading bytes, byte compares only:

=========  ==========================================  ==========================
format     a datagram that                             module
=========  ==========================================  ==========================
json       starts with ``{`` (or anything else below)  codec.py
syslog     starts ``<`` 1-3 digits ``>``               syslog.py
gelf       starts ``78 01|5e|9c|da`` (zlib),           gelf.py
           ``1f 8b`` (gzip) or ``1e 0f`` (a chunk)
statsd     starts with a letter, digit or ``_`` and    statsd.py
           holds a ``|`` (``name:value|type``)
=========  ==========================================  ==========================

The reader (sources.py) sends a datagram that starts with ``{`` straight to
the JSON decoder, so the plain path pays one byte compare for all this, and
every other datagram here. What matches no dialect goes to the JSON decoder
too, and is rejected as any bad JSON is (``invalid_json``, ``not_object``: a
bare ``123`` or ``[1]`` has no ``|``, so it is never taken for statsd). A
datagram of a recognised format that ``--input-formats`` leaves out is
rejected as ``format_disabled``, one event per line: it names what arrived
instead of calling a statsd line bad JSON.

What each dialect publishes
---------------------------
* gelf: the inflated JSON object, byte for byte (whitespace around it
  removed); the whole GELF message is one event, newlines and all.
* syslog: the message, which must be a JSON object, byte for byte, with the
  header's facts as ``syslog_*`` attributes (config.SYSLOG_ATTRIBUTES); with
  ``--syslog-wrap-text`` a message that is not a JSON object is published as
  ``{"message": "<its text>"}`` instead of rejected.
* statsd: one JSON object per sample, written here (statsd.py has the shapes).

Attributes on the plain path
----------------------------
Without --attribute and the like, the pipeline carries each event as its own
bytes, and the publisher wraps each in a PubsubMessage holding only ``data``.
A syslog event carries attributes, so it travels as a whole PubsubMessage
body in the same queue, typed as one (pubsub.Body), which the publisher
frames as it is (pubsub.RequestEncoder): its type tells the two apart, never
its bytes. With metadata configured, every event is a body anyway
(pipeline/lanes.py) and the facts join the configured attributes.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from orjson import JSONDecodeError, loads

from ingest.config import INPUT_FORMATS, PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES
from ingest.pipeline.message import MessageBuilder
from ingest.publish.pubsub import body_of, encode_attribute
from ingest.receive import gelf, statsd, syslog
from ingest.receive.codec import (
    MAX_DECODED_BYTES,
    Build,
    BuildFrom,
    Decoder,
    count_events,
    messages_decoder,
    reason_of,
)
from ingest.receive.wakeup import WakeUp
from ingest.stats import Stats
from ingest.vocabulary import Reject, Skip

JSON, GELF, SYSLOG, STATSD = INPUT_FORMATS
# The format label of events rejected before their bytes were looked at:
# a datagram over --max-datagram-bytes, a sender outside an allow-list.
UNKNOWN = "unknown"

# Reject reasons of this module (fixed; metric labels).
REJECT_REASONS = (Reject.FORMAT_DISABLED,)


# Incomplete chunked GELF messages of one listener: their bytes and
# bookkeeping (gelf.Reassembler's estimate). 128 chunks of 8 KiB is 1 MiB, so
# this holds dozens of large messages in flight at once.
GELF_PENDING_MAX_BYTES = 32 << 20
# Encoded syslog facts kept, and the longest value kept: a hostname or tag
# is as long as its sender makes it, and 4,096 of 60 KB would hold 230 MiB; a
# real one is under 256 characters (RFC 5424 allows 255 for a hostname).
ENCODED_FACTS_CACHED = 4096
FACT_MAX_CACHED_CHARS = 256

_STATSD_FIRST = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
_GELF_FIRST = frozenset((0x78, 0x1F, 0x1E))
_AROUND_JSON = b" \t\r\n"  # JSON's insignificant whitespace


def recognise(data: bytes) -> str:
    """The format ``data`` looks like, by its leading bytes (JSON when
    nothing else fits)."""
    if not data:
        return JSON
    first = data[0]
    if first == 0x3C:  # <
        return SYSLOG if syslog.looks_like_syslog(data) else JSON
    if first in _GELF_FIRST and gelf.kind(data) is not None:
        return GELF
    if first in _STATSD_FIRST and b"|" in data:
        return STATSD
    return JSON


class Dialects:
    """The decoder of one listener's datagrams that do not start with ``{``.

    ``decode`` and ``count`` have the codec's contract (events appended to
    ``out``, rejects counted, the datagram's events returned) so the reader
    can call them in place of ``decode_json`` and ``codec.count_events``.
    What a datagram tells about its wake-up goes to the wake-up the reader
    passes (wakeup.WakeUp): events of a dialect counted by format (JSON's
    are what remains), chunks that ended no message, the format and GELF's
    inflated text for a tap, and the sender's attributes come from it. What
    this object holds lasts longer than a wake-up: the configuration, the
    GELF reassembler and the encoded syslog facts.

    ``builder``: the metadata pipeline's (events go out as (lane, body)
    pairs, pipeline/message.py), or None for the plain pipeline; one for
    every reader, the sender being the wake-up's. ``reassembler``: the
    listener's own; the 8 random bytes of GELF's message id keep senders
    apart (the reader does not learn UDP addresses: that would cost every
    datagram a recvfrom).

    What the dialects write -- statsd's events, inflated GELF, syslog
    bodies, and with metadata every message -- is added to the wake-up's
    ``written`` as it is written, which the reader ends a wake-up at as it
    does at bytes received. With ``builder``, JSON is decoded by
    ``codec.messages_decoder`` adding to it too, in place of ``decode_json``
    (which decodes the same way, uncounted), and the reader takes
    ``decode_json`` from here.
    """

    def __init__(
        self,
        label: str,
        formats: frozenset[str],
        decode_json: Decoder,
        stats: Stats,
        reassembler: gelf.Reassembler,
        *,
        max_event_bytes: int,
        wrap_text: bool = False,
        builder: MessageBuilder | None = None,
    ) -> None:
        self.label = label
        self.formats = formats
        self.decode_json = decode_json if builder is None else messages_decoder(builder.build)
        self.stats = stats
        self.reassembler = reassembler
        self.max_event_bytes = max_event_bytes
        self.wrap_text = wrap_text
        self.builder = builder
        self._facts: dict[tuple[str, str], bytes] = {}  # encoded syslog attributes
        self._build = builder.build if builder is not None else None

    # ------------------------------------------------------------ the reader's
    def decode(
        self, data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        fmt = wake.format = recognise(data)
        if fmt not in self.formats:
            return self._disabled(fmt, data, rejected, wake)
        if fmt == JSON:
            return self.decode_json(data, out, rejected, wake)
        if fmt == STATSD:
            count = self._statsd(data, out, rejected, wake)
        elif fmt == SYSLOG:
            count = self._syslog(data, out, rejected, wake)
        else:
            count = self._gelf(data, out, rejected, wake)
        counts = wake.counts
        counts[fmt] = counts.get(fmt, 0) + count
        return count

    def count(self, data: bytes, wake: WakeUp) -> int:
        """``codec.count_events`` for a datagram that cannot be kept (the
        queue is full): one per line for statsd, one for a GELF or syslog
        message. A GELF chunk still goes to the reassembler, so the message
        it belongs to is counted once, as dropped, when it completes."""
        fmt = wake.format = recognise(data)
        wake.text = None
        if fmt == JSON:
            return count_events(data)
        if fmt not in self.formats:
            count = _disabled_events(fmt, data)
        elif fmt == STATSD:
            count = count_events(data)
        elif fmt == GELF and gelf.kind(data) == gelf.CHUNK:
            count = 1 if self._reassemble(data, wake) is not None else 0
        else:
            count = 1
        wake.counts[fmt] = wake.counts.get(fmt, 0) + count
        return count

    def expire(self, now: float) -> None:
        """End chunked messages whose time ran out (housekeeping; at
        shutdown with ``math.inf``): each is an event received here and
        rejected."""
        self.reassembler.expire(now)
        self._count_reassembler_losses()

    # ---------------------------------------------------------------- formats
    def _disabled(
        self, fmt: str, data: bytes, rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        count = _disabled_events(fmt, data)
        if count:
            rejected[Reject.FORMAT_DISABLED] += count
            if fmt != JSON:
                wake.counts[fmt] = wake.counts.get(fmt, 0) + count
        return count

    def _statsd(
        self, data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        build = self._build
        if build is not None and wake.sender:  # each event gets its sender's attributes
            return statsd.decode_statsd(data, out, rejected, _from_sender(build, wake.sender), wake)
        return statsd.decode_statsd(data, out, rejected, build, wake)

    def _syslog(
        self, data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        try:
            message = syslog.parse(data)
        except syslog.SyslogError as exc:
            rejected[exc.reason] += 1
            return 1
        body = message.body
        try:
            parsed = loads(body)
        except JSONDecodeError:
            parsed, unparsable = None, True
        else:
            unparsable = False  # the reason is looked up on the reject path only
        if type(parsed) is not dict:
            if not self.wrap_text:
                rejected[reason_of(body) if unparsable else Reject.NOT_OBJECT] += 1
                return 1
            body = syslog.wrap_text(body)  # up to 6 times the text: "\u0001" for 0x01
            if len(body) > MAX_DECODED_BYTES:
                wake.written += len(body)
                rejected[Reject.DECODED_TOO_LARGE] += 1
                return 1
            parsed = loads(body)
        # The sender's attributes, then the facts: one suffix of attribute entries.
        self._emit(body, parsed, wake.sender + self._encoded(message.facts), out, wake)
        return 1

    def _gelf(
        self, data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        wake.text = None  # until this datagram's payload is inflated
        payload = data
        if gelf.kind(data) == gelf.CHUNK:
            whole = self._reassemble(data, wake)
            if whole is None:
                return 0
            payload = whole
        try:
            text = gelf.unwrap(payload, self.max_event_bytes)
        except gelf.GelfError as exc:
            if exc.reason == Reject.TOO_LARGE:  # a bomb: inflated to the bound in vain
                wake.written += self.max_event_bytes
            rejected[exc.reason] += 1
            return 1
        text = wake.text = text.strip(_AROUND_JSON)
        try:
            parsed = loads(text)
        except JSONDecodeError:
            wake.written += len(text)
            rejected[reason_of(text)] += 1
            return 1
        if type(parsed) is not dict:
            wake.written += len(text)
            rejected[Reject.NOT_OBJECT] += 1
            return 1
        self._emit(text, parsed, wake.sender, out, wake)
        return 1

    # ---------------------------------------------------------------- helpers
    def _reassemble(self, chunk: bytes, wake: WakeUp) -> bytes | None:
        """The chunk's message when it completes one, else None (the chunk
        was kept, or ended a message counted by the reassembler)."""
        payload = self.reassembler.add(chunk, None, time.monotonic())
        if payload is None:
            wake.absorbed += 1
        self._count_reassembler_losses()
        return payload

    def _count_reassembler_losses(self) -> None:
        """Messages the reassembler gave up on are events received at this
        listener and rejected; chunks it could not use are ignored datagrams."""
        reassembler = self.reassembler
        stats = self.stats
        if reassembler.abandoned:
            for reason, n in reassembler.abandoned.items():
                stats.rejected[reason] += n
                stats.events_received[self.label] += n
                stats.events_by_format[(self.label, GELF)] += n
            reassembler.abandoned.clear()
        if reassembler.ignored:
            for reason, n in reassembler.ignored.items():
                stats.datagrams_ignored[reason] += n
            reassembler.ignored.clear()

    def _emit(
        self, data: bytes, parsed: dict[str, object], facts: bytes, out: list[Any], wake: WakeUp
    ) -> None:
        """One accepted event, in the pipeline's shape, counted as built."""
        if self.builder is not None:
            item = self.builder.build(data, parsed, facts)
            wake.written += len(item[1])
            out.append(item)
            return
        if facts:  # a body: see "Attributes on the plain path"
            data = body_of(data, facts)
        wake.written += len(data)
        out.append(data)

    def _encoded(self, facts: syslog.Facts) -> bytes:
        """The facts as attribute entries; each (name, value) encoded once
        (bounded cache: timestamps and pids keep changing)."""
        cache = self._facts
        parts = []
        for fact in facts:
            piece = cache.get(fact)
            if piece is None:
                if len(cache) >= ENCODED_FACTS_CACHED:
                    cache.clear()
                name, value = fact
                raw = value.encode()
                if len(raw) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES:  # Pub/Sub would refuse it all
                    piece = b""
                else:
                    piece = encode_attribute(f"syslog_{name}".encode(), raw)
                if len(value) <= FACT_MAX_CACHED_CHARS:
                    cache[fact] = piece
            if not piece:
                self.stats.attributes_skipped[Skip.VALUE_TOO_LONG] += 1
            parts.append(piece)
        return b"".join(parts)


def _from_sender(build: BuildFrom, sender: bytes) -> Build:
    """``build`` giving every event ``sender``'s attribute entries."""

    def build_from(data: bytes, event: dict[str, object]) -> tuple[Any, bytes]:
        return build(data, event, sender)

    return build_from


def _disabled_events(fmt: str, data: bytes) -> int:
    """The events of a datagram of a format turned away: its lines (JSON,
    statsd), or one (a GELF or syslog datagram; a GELF chunk too, as chunks
    are not put together then)."""
    return count_events(data) if fmt in (STATSD, JSON) else 1
