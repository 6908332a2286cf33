"""Datagram decoding: pure functions, no I/O.

A datagram carries one JSON object, or several separated by newlines
(statsd-style emitters pack lines into one packet). Each non-blank line is an
*event*: it must parse with orjson and be a JSON object. A valid event is kept
as its ORIGINAL bytes, never re-serialised. One bad line does not spoil the
good lines of the same datagram.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from orjson import JSONDecodeError, loads

from ingest.vocabulary import Reject

# Reject reasons: a fixed vocabulary (they become metric labels).
INVALID_JSON = Reject.INVALID_JSON
INVALID_UTF8 = Reject.INVALID_UTF8
NOT_OBJECT = Reject.NOT_OBJECT
TOO_LARGE = Reject.TOO_LARGE  # a whole datagram over --max-datagram-bytes
SOURCE_DENIED = Reject.SOURCE_DENIED  # a UDP sender outside --udp-allow (never decoded)
SENDER_DENIED = Reject.SENDER_DENIED  # a unix sender outside --unix-allow-uid (never decoded)
REJECT_REASONS = (INVALID_JSON, INVALID_UTF8, NOT_OBJECT, TOO_LARGE, SOURCE_DENIED, SENDER_DENIED)

# How a reader decodes a datagram: (datagram, out, rejected) -> events counted.
# ``out`` gets events (decode_datagram) or (lane, body) pairs (decode_messages).
Decoder = Callable[[bytes, list[Any], MutableMapping[str, int]], int]

# JSON's insignificant whitespace (RFC 8259); a line of only these is blank.
_JSON_WHITESPACE = b" \t\r"


def decode_datagram(data: bytes, out: list[bytes], rejected: MutableMapping[str, int]) -> int:
    """Append the valid event lines of ``data`` to ``out`` and count rejects.

    Returns the number of events (non-blank lines) the datagram held, valid or
    not, so callers can keep received = accepted + rejected. Never raises.
    """
    if b"\n" not in data:  # the common case: one event per datagram
        try:
            obj = loads(data)
        except JSONDecodeError:
            return _unparsable(data, rejected)
        if type(obj) is dict:
            out.append(data)
        else:
            rejected[NOT_OBJECT] += 1
        return 1
    events = 0
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
            rejected[NOT_OBJECT] += 1
    return events


def decode_messages(
    data: bytes,
    out: list[Any],
    rejected: MutableMapping[str, int],
    build: Callable[[bytes, dict[str, object]], Any],
) -> int:
    """``decode_datagram`` for the pipeline of Pub/Sub-native messages: each
    valid event goes out as ``build(line, parsed_object)`` (message.py: its
    lane and body), the object parsed once for both the check and the
    metadata. A separate loop, so that the plain path pays nothing for it."""
    events = 0
    for line in data.split(b"\n") if b"\n" in data else (data,):
        try:
            obj = loads(line)
        except JSONDecodeError:
            events += _unparsable(line, rejected)
            continue
        events += 1
        if type(obj) is dict:
            out.append(build(line, obj))
        else:
            rejected[NOT_OBJECT] += 1
    return events


def messages_decoder(build: Callable[[bytes, dict[str, object]], Any]) -> Decoder:
    """``decode_messages`` bound to ``build``, as a reader calls it, with
    decode_datagram's shortcut for a datagram of one line: a closure, not a
    functools.partial, whose keyword merge alone cost ~0.25 µs a datagram
    (tools/bench_lanes.py)."""

    def decode(data: bytes, out: list[Any], rejected: MutableMapping[str, int]) -> int:
        if b"\n" in data:
            return decode_messages(data, out, rejected, build)
        try:
            obj = loads(data)
        except JSONDecodeError:
            return _unparsable(data, rejected)
        if type(obj) is dict:
            out.append(build(data, obj))
        else:
            rejected[NOT_OBJECT] += 1
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
        return INVALID_UTF8
    return INVALID_JSON


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
