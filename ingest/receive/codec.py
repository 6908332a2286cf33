"""Datagram decoding: pure functions, no I/O.

A datagram carries one JSON object, or several separated by newlines
(statsd-style emitters pack lines into one packet). Each non-blank line is an
*event*: it must parse with orjson and be a JSON object. A valid event is kept
as its ORIGINAL bytes, never re-serialised. One bad line does not spoil the
good lines of the same datagram.

What one datagram may decode to
-------------------------------
The events of one datagram take at most ``MAX_DECODED_BYTES`` together. JSON
lines are slices of their datagram, which is no larger, so only decoders that
write bytes of their own meet the bound: statsd's (an event per sample, each
with its line's tags) and, with metadata, every decoder of several events a
datagram (each message gets the attributes). The event whose bytes (its
message's, with metadata) would pass the bound is rejected, and so is the rest
of the datagram, undecoded: ``decoded_too_large``, one event per non-blank
line, as the reader counts a datagram it cannot keep. Such a decoder also adds
what it kept to its wake-up's ``written`` (wakeup.WakeUp), which the reader
ends the wake-up at, as at bytes received.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from orjson import JSONDecodeError, loads

from ingest.config import MAX_DATAGRAM_CEILING
from ingest.receive.wakeup import WakeUp
from ingest.vocabulary import Reject

# Reject reasons: a fixed vocabulary (they become metric labels).
REJECT_REASONS = (
    Reject.INVALID_JSON,
    Reject.INVALID_UTF8,
    Reject.NOT_OBJECT,
    Reject.TOO_LARGE,
    Reject.SOURCE_DENIED,
    Reject.SENDER_DENIED,
    Reject.DECODED_TOO_LARGE,
)

# The most one datagram's events may take (module docstring): as much as the
# largest datagram, so that JSON lines never meet it, and a wake-up's whole
# bytes budget (wakeup.WAKEUP_MAX_BYTES), so that the datagram crossing that
# budget at most doubles it. A statsd line's samples repeat its tags, so 64 KB
# of them could write gigabytes.
MAX_DECODED_BYTES = MAX_DATAGRAM_CEILING

# How a reader decodes a datagram: (datagram, out, rejected, its wake-up) ->
# events counted. ``out`` gets events (decode_datagram) or (lane, body) pairs
# (decode_messages); the wake-up gives the sender and gets the bytes written.
Decoder = Callable[[bytes, list[Any], MutableMapping[str, int], WakeUp], int]
# With metadata: (event bytes, parsed event) -> (lane, body), message.MessageBuilder.build.
Build = Callable[[bytes, dict[str, object]], tuple[Any, bytes]]
# The same with the attribute entries of the event's sender (WakeUp.sender),
# MessageBuilder.build's ``extra``.
BuildFrom = Callable[[bytes, dict[str, object], bytes], tuple[Any, bytes]]

# JSON's insignificant whitespace (RFC 8259); a line of only these is blank.
_JSON_WHITESPACE = b" \t\r"


def decode_datagram(
    data: bytes,
    out: list[bytes],
    rejected: MutableMapping[str, int],
    wake: WakeUp | None = None,
) -> int:
    """Append the valid event lines of ``data`` to ``out`` and count rejects.

    Returns the number of events (non-blank lines) the datagram held, valid or
    not, so callers can keep received = accepted + rejected. Never raises.
    The events are slices of ``data``: nothing is written, nothing is taken
    from ``wake``.
    """
    if b"\n" not in data:  # the common case: one event per datagram
        try:
            obj = loads(data)
        except JSONDecodeError:
            return _unparsable(data, rejected)
        if type(obj) is dict:
            out.append(data)
        else:
            rejected[Reject.NOT_OBJECT] += 1
        return 1
    events = 0
    # Looked up once a datagram, not once a line: an enum member's lookup
    # costs ~70 ns, which a datagram of rejected lines would pay per line.
    not_object = Reject.NOT_OBJECT
    for line in data.split(b"\n"):
        try:
            obj = loads(line)
        except JSONDecodeError:
            events += _unparsable(line, rejected)
            continue
        events += 1
        if type(obj) is dict:
            out.append(line)
        else:
            rejected[not_object] += 1
    return events


def decode_messages(
    data: bytes,
    out: list[Any],
    rejected: MutableMapping[str, int],
    wake: WakeUp,
    build: BuildFrom,
) -> int:
    """``decode_datagram`` for the pipeline of Pub/Sub-native messages: each
    valid event goes out as ``build(line, parsed_object, wake.sender)``
    (pipeline/message.py: its lane and body), the object parsed once for both
    the check and the metadata. A separate loop, so that the plain path pays
    nothing for it.

    The bodies take at most MAX_DECODED_BYTES (module docstring): every line
    gets the metadata, so 21,845 ``{}`` lines in 64 KiB, each given a few
    hundred bytes of attributes, would take megabytes. ``wake.written`` gets
    the bytes kept."""
    sender = wake.sender
    events = 0
    not_object = Reject.NOT_OBJECT  # once a datagram, as in decode_datagram
    room = MAX_DECODED_BYTES
    lines = iter(data.split(b"\n") if b"\n" in data else (data,))
    for line in lines:
        try:
            obj = loads(line)
        except JSONDecodeError:
            events += _unparsable(line, rejected)
            continue
        events += 1
        if type(obj) is dict:
            item = build(line, obj, sender)
            room -= len(item[1])
            if room < 0:  # this line and the rest of the datagram: the rare path
                room += len(item[1])
                rest = sum(1 for later in lines if later.strip(_JSON_WHITESPACE))
                rejected[Reject.DECODED_TOO_LARGE] += 1 + rest
                events += rest
                break
            out.append(item)
        else:
            rejected[not_object] += 1
    wake.written += MAX_DECODED_BYTES - room
    return events


def messages_decoder(build: BuildFrom) -> Decoder:
    """``decode_messages`` bound to ``build``, as a reader calls it, with
    decode_datagram's shortcut for a datagram of one line: a closure, not a
    functools.partial, whose keyword merge alone costs ~0.25 µs a datagram
    (tools/bench/lanes.py). ``wake.written`` gets the bytes of the messages of
    datagrams of several lines; a datagram's one message is its line and the
    metadata, and is not counted, which keeps the common path free of that work."""

    def decode(
        data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
    ) -> int:
        if b"\n" in data:
            return decode_messages(data, out, rejected, wake, build)
        try:
            obj = loads(data)
        except JSONDecodeError:
            return _unparsable(data, rejected)
        if type(obj) is dict:
            out.append(build(data, obj, wake.sender))
        else:
            rejected[Reject.NOT_OBJECT] += 1
        return 1

    return decode


def _unparsable(line: bytes, rejected: MutableMapping[str, int]) -> int:
    """A line orjson refused: blank (0 events), or one event rejected by
    reason. The error path only."""
    if not line.strip(_JSON_WHITESPACE):
        return 0
    rejected[reason_of(line)] += 1
    return 1


def reason_of(line: bytes) -> str:
    """Why a line failed to parse; runs only on the error path."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return Reject.INVALID_UTF8
    return Reject.INVALID_JSON


def count_events(data: bytes) -> int:
    """How many events (non-blank lines) ``decode_datagram`` would count in
    ``data``, without parsing them: for a datagram that cannot be kept
    anyway (the queue is full), so a flood costs least when we are behind."""
    if b"\n" not in data:
        return 1 if data.strip(_JSON_WHITESPACE) else 0
    lines = data.split(b"\n")
    if b" " in data or b"\t" in data or b"\r" in data:  # lines of only these are blank
        return sum(1 for line in lines if line.strip(_JSON_WHITESPACE))
    return len(lines) - lines.count(b"")
