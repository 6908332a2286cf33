"""statsd and DogStatsD datagram decoding: pure functions, no I/O.

ingest is not an aggregator: every sample a client sends becomes one JSON
event. ``decode_statsd`` keeps ``codec.decode_datagram``'s contract, so a
reader can use either.

Datagram
    Lines separated by ``\\n``; a trailing newline is usual (DogStatsD
    clients end every line with one). A line that is empty or only spaces,
    tabs and CRs is blank: not an event. A line loses one trailing CR, as in
    the Datadog Agent, so CRLF senders get through; nothing else is trimmed.
    A line that is not UTF-8 is rejected as ``invalid_utf8`` whatever else
    is wrong with it.

Metric line
    ``NAME:VALUES|TYPE[|FIELD]...``. NAME is everything before the first
    ``:`` (non-empty). TYPE is ``c`` counter, ``g`` gauge, ``ms`` timer,
    ``h`` histogram, ``d`` distribution or ``s`` set. VALUES is one value
    or, but for sets, several joined by ``:`` (DogStatsD protocol v1.1); a
    set's value is any non-empty text, colons included. A number is decimal
    text (``12``, ``-2``, ``+2``, ``3.5``, ``.5``, ``1e3``): an int when it is
    an optional sign and at most 18 digits, else a float; NaN, infinities,
    ``_``, spaces, hex and non-ASCII digits are not numbers. A gauge value
    with a sign is a delta (etsy statsd: ``g:-2|g`` lowers the gauge by 2;
    pystatsd sends ``g:0|g`` then ``g:-5|g`` to *set* -5). Fields:

    * ``@RATE``: sample rate, a number in (0, 1];
    * ``#TAGS``: comma-separated tags (below);
    * ``c:ID``: container id (origin detection); ``e:DATA`` external data;
      ``card:C`` cardinality: strings, kept as sent;
    * ``TSECONDS``: unix timestamp, a positive int of at most 18 digits.

    As in the Datadog Agent, a field of another form (or empty) is ignored,
    so that clients newer than this module still get through, and a field
    given twice counts the last time.

Metric event: one per value, the line's fields repeated in each::

    {"metric": "a.hits", "value": 1, "type": "c"}
    {"metric": "g", "value": -2, "type": "g", "delta": true}
    {"metric": "s", "value": "u1", "type": "s"}
    {"metric": "a.h", "value": 3.5, "type": "h", "sample_rate": 0.5,
     "tags": {"x": "y"}, "container_id": "abc123", "timestamp": 1700000000}

    ``delta`` is present (true) only for signed gauge values; ``sample_rate``,
    ``tags``, ``container_id``, ``external_data``, ``cardinality`` and
    ``timestamp`` only when the line has them, in the order the line first
    gives them.

Tags
    Each tag is split at its first ``:`` into key and value (``a:b:c`` is
    key ``a``, value ``b:c``). A bare tag (``flag``) has the value JSON
    ``null``: Datadog treats it as a tag without a value, which is neither
    ``flag:`` (an empty value, ``""``) nor a boolean, and null keeps every
    value a string-or-null for typed consumers. Empty tags (``#``, ``,,``, a
    trailing comma) are skipped; a line without any tag has no ``tags`` key.
    A key given with several values (Datadog's multi-valued tags,
    ``role:web,role:db``) keeps all of them as a list in the order sent
    (``{"role": ["web", "db"]}``): a dict that kept only one would drop data
    silently. A tag repeated exactly is kept once, as Datadog does.

DogStatsD event
    ``_e{TITLE_LEN,TEXT_LEN}:TITLE|TEXT[|FIELD]...`` with the lengths in
    UTF-8 bytes, which lets title and text contain ``|``; ``\\n`` (backslash,
    n) in them is a newline. The title is non-empty. Fields: ``d:`` timestamp
    (as ``T`` above), ``h:`` hostname, ``k:`` aggregation_key, ``p:``
    priority (``normal``/``low``), ``s:`` source_type, ``t:`` alert_type
    (``error``/``warning``/``info``/``success``), ``#`` tags, ``c:``/``e:``/
    ``card:`` as for metrics::

        {"event": {"title": "Man down!", "text": "...", "timestamp": 1700000000,
                   "hostname": "web1", "priority": "low", "tags": {"env": "prod"}}}

DogStatsD service check
    ``_sc|NAME|STATUS[|FIELD]...``, STATUS 0 (OK), 1 (warning), 2 (critical)
    or 3 (unknown). Fields: ``d:`` timestamp, ``h:`` hostname, ``#`` tags,
    ``m:`` message (clients escape a newline as ``\\n`` and ``m:`` as
    ``m\\:``; both are undone), ``c:``/``e:``/``card:``::

        {"service_check": {"name": "my.check", "status": 1, "message": "..."}}

    Keys other than title/text and name/status are present only when given.

Rejects and accounting
    A line is accepted or rejected whole: one bad value, rate or field
    rejects every value of its line. Reasons: ``invalid_statsd`` (not the
    grammar above), ``unsupported_statsd`` (well formed but of a metric
    type this module does not know, a TYPE of ASCII letters such as etsy's
    ``kv``), and ``Reject.INVALID_UTF8``. ``decode_statsd`` returns the number
    of events: a valid metric line counts one per value, every other
    non-blank line one (a valid event or service check, or a reject), so the
    returned count is always events appended plus rejects counted.

What one datagram may decode to
    Every sample repeats its line's fields, so ``m:1:1:...|c|#TAGS`` of 64 KB
    would write as many copies of TAGS as it has values: gigabytes. The
    events of one datagram (with metadata, their messages) take at most
    ``codec.MAX_DECODED_BYTES`` (1 MiB). The event that would pass it is
    rejected as ``decoded_too_large``, and so is everything after it,
    undecoded: each further value of its line one event, each later
    non-blank line one (as ``codec.count_events`` counts them). The events
    before it are kept, those of its own line included: each is a sample of
    its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from orjson import dumps

from ingest.receive.codec import MAX_DECODED_BYTES, Build
from ingest.receive.wakeup import WakeUp
from ingest.vocabulary import Reject

# Reject reasons: a fixed vocabulary (they become metric labels). A line that
# is not UTF-8 is Reject.INVALID_UTF8, already among codec.REJECT_REASONS.
REJECT_REASONS = (Reject.INVALID_STATSD, Reject.UNSUPPORTED_STATSD)

TagValue = str | None | list[str | None]
Tags = dict[str, TagValue]

_METRIC_TYPES = frozenset(("c", "g", "ms", "h", "d", "s"))
_BLANK = " \t\r"
_PIPE = 0x7C
# An int of at most 18 digits (and a sign) fits in 64 bits, which orjson
# and JSON readers keep exact; longer integral text is read as a float.
_MAX_INT_DIGITS = 18
# Event lengths: 9 digits are far more than any datagram holds; the header
# "_e{TITLE_LEN,TEXT_LEN}:" is searched for its end no further than that.
_MAX_LENGTH_DIGITS = 9
_EVENT_HEADER_END = len("_e{") + 2 * _MAX_LENGTH_DIGITS + len(",}:")
# Decimal numbers only: float() would also take "nan", "1_0", " 1" and
# non-ASCII digits. Possessive quantifiers keep a failed match linear.
_DECIMAL = re.compile(r"[+-]?(?:\d++(?:\.\d*+)?|\.\d++)(?:[eE][+-]?\d++)?", re.ASCII)
# looks_like_statsd: the bytes a metric name, "_e{" or "_sc|" starts with.
_FIRST_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
_SERVICE_CHECK_STATUS = {"0": 0, "1": 1, "2": 2, "3": 3}
_PRIORITIES = frozenset(("normal", "low"))
_ALERT_TYPES = frozenset(("error", "warning", "info", "success"))


class _Invalid(Exception):
    """A line that cannot become an event; ``reason`` is its reject reason."""

    def __init__(self, reason: str = Reject.INVALID_STATSD) -> None:
        super().__init__(reason)
        self.reason = reason


class _Full(Exception):
    """The datagram's events reached MAX_DECODED_BYTES: ``unbuilt`` events
    of the current line did not go out (those before them did), which left
    ``room`` bytes."""

    def __init__(self, unbuilt: int, room: int) -> None:
        super().__init__(unbuilt, room)
        self.unbuilt = unbuilt
        self.room = room


def looks_like_statsd(data: bytes) -> bool:
    """True if ``data`` starts with an ASCII letter, digit or ``_``, as every
    statsd line does; JSON starts with ``{`` or whitespace, syslog with ``<``.
    True also for a zlib stream (GELF): its first byte 0x78 is ``x``, so a
    caller checks for zlib (a full header check) first. GELF's other magic
    bytes (0x1f gzip, 0x1e chunked) give False."""
    return bool(data) and data[0] in _FIRST_BYTES


def decode_statsd(
    data: bytes,
    out: list[Any],
    rejected: MutableMapping[str, int],
    build: Build | None = None,
    wake: WakeUp | None = None,
) -> int:
    """Append one JSON event per statsd sample, DogStatsD event or service
    check in ``data`` to ``out`` and count rejects by reason in ``rejected``.
    ``build``: with metadata, each event goes out as ``build(its bytes, the
    event)`` (message.MessageBuilder.build: its lane and body) instead.
    ``wake``: its ``written`` gets the bytes that went out (the bodies', with
    metadata).

    Returns the number of events, accepted plus rejected (see the module
    docstring for how lines count). Never raises."""
    try:
        text = data.decode()
    except UnicodeDecodeError:  # its lines one by one: only the bad ones are lost
        return _decode_lines((_utf8(raw) for raw in data.split(b"\n")), out, rejected, build, wake)
    return _decode_lines(
        iter(text.split("\n")) if "\n" in text else (text,), out, rejected, build, wake
    )


def _utf8(raw: bytes) -> str | None:
    """A line of a datagram that is not UTF-8 as a whole; None: not this one."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _decode_lines(
    lines: Iterable[str | None],
    out: list[Any],
    rejected: MutableMapping[str, int],
    build: Build | None,
    wake: WakeUp | None,
) -> int:
    """``decode_statsd`` over a datagram's lines (None: a line that is not
    UTF-8, rejected alone). The line functions append to ``out`` and return
    the room left, so the events are what ``out`` gained, and the rejects are
    counted here."""
    start = len(out)
    room = MAX_DECODED_BYTES
    bad = 0
    for line in lines:
        if line is None:
            rejected[Reject.INVALID_UTF8] += 1
            bad += 1
            continue
        if not line.strip(_BLANK):
            continue
        try:
            room = _decode_line(line, out, build, room)
        except _Invalid as invalid:
            rejected[invalid.reason] += 1
            bad += 1
        except _Full as full:
            room = full.room
            bad += _cut(full, lines, rejected)
            break
    if wake is not None:
        wake.written += MAX_DECODED_BYTES - room
    return len(out) - start + bad


def _cut(full: _Full, lines: Iterable[str | None], rejected: MutableMapping[str, int]) -> int:
    """The events rejected at the bound: the current line's unbuilt ones and
    one per later non-blank line (not decoded; ``lines``: an iterator past
    the current one, or a datagram's one line). Returns how many."""
    rest = full.unbuilt
    if isinstance(lines, Iterator):
        rest += sum(1 for line in lines if line is None or line.strip(_BLANK))
    rejected[Reject.DECODED_TOO_LARGE] += rest
    return rest


def _decode_line(line: str, out: list[Any], build: Build | None, room: int) -> int:
    """Append the events of one non-blank line; return the room left."""
    if line[-1] == "\r":  # CRLF
        line = line[:-1]
    if line[0] == "_":
        if line.startswith("_e{"):
            event: dict[str, object] = {"event": _event(line)}
            return _put(dumps(event), event, out, build, room)
        if line.startswith("_sc|"):
            check: dict[str, object] = {"service_check": _service_check(line)}
            return _put(dumps(check), check, out, build, room)
    return _metric(line, out, build, room)


def _put(
    data: bytes, event: dict[str, object], out: list[Any], build: Build | None, room: int
) -> int:
    """Append one event, ``data`` its JSON, if it fits; return the room left."""
    if build is None:
        item: Any = data
        size = len(data)
    else:
        item = build(data, event)
        size = len(item[1])
    if size > room:
        raise _Full(1, room)
    out.append(item)
    return room - size


def _metric(line: str, out: list[Any], build: Build | None, room: int) -> int:
    fields = line.split("|")
    if len(fields) < 2:
        raise _Invalid
    name, _, values = fields[0].partition(":")
    if not name or not values:
        raise _Invalid
    kind = fields[1]
    if kind not in _METRIC_TYPES:
        raise _Invalid(
            Reject.UNSUPPORTED_STATSD
            if kind.isascii() and kind.isalpha()
            else Reject.INVALID_STATSD
        )
    extra = _fields(fields, 2, _METRIC_FIELDS) if len(fields) > 2 else None
    if kind == "s" or ":" not in values:  # one value: the common case, kept short
        value = values if kind == "s" else _number(values)
        if value is None:
            raise _Invalid
        event: dict[str, object] = {"metric": name, "value": value, "type": kind}
        if kind == "g" and values[0] in "+-":
            event["delta"] = True
        if extra:
            event.update(extra)
        data = dumps(event)
        if build is not None:
            return _put(data, event, out, build, room)
        size = len(data)
        if size > room:
            raise _Full(1, room)
        out.append(data)
        return room - size
    # Several values (DogStatsD v1.1): all are checked before any event is
    # appended, as a line is accepted or rejected whole.
    parts = values.split(":")
    numbers = [_number(part) for part in parts]
    if None in numbers:
        raise _Invalid
    return _samples(name, kind, parts, numbers, extra=extra, out=out, build=build, room=room)


def _samples(
    name: str,
    kind: str,
    parts: list[str],
    numbers: list[int | float | None],
    *,
    extra: dict[str, object] | None,
    out: list[Any],
    build: Build | None,
    room: int,
) -> int:
    """Append the events of a line of several values; return the room left.
    They differ in the value (and a gauge's delta) alone, so the JSON around
    it is written once, as orjson writes the whole event: a line's tags are
    serialised once, not once a value."""
    head = b'{"metric":' + dumps(name) + b',"value":'
    rest = b"," + dumps(extra)[1:] if extra else b"}"
    tail = b',"type":"' + kind.encode() + b'"' + rest
    delta_tail = b',"type":"' + kind.encode() + b'","delta":true' + rest
    gauge = kind == "g"
    for index, (part, number) in enumerate(zip(parts, numbers, strict=True)):
        delta = gauge and part[0] in "+-"
        data = head + dumps(number) + (delta_tail if delta else tail)
        item: Any = data
        size = len(data)
        if build is not None:
            event: dict[str, object] = {"metric": name, "value": number, "type": kind}
            if delta:
                event["delta"] = True
            if extra:
                event.update(extra)
            item = build(data, event)
            size = len(item[1])
        if size > room:
            raise _Full(len(parts) - index, room)
        room -= size
        out.append(item)
    return room


def _event(line: str) -> dict[str, object]:
    # The lengths count UTF-8 bytes, so the title and text are cut from the
    # encoded line. Each cut is next to an ASCII byte ("}:" and "|") of a
    # line that decoded, so the pieces decode too.
    raw = line.encode()
    close = raw.find(b"}:", 3, _EVENT_HEADER_END)
    if close < 0:
        raise _Invalid
    title_length, _, text_length = raw[3:close].partition(b",")
    start = close + 2
    title_end = start + _length(title_length)
    text_end = title_end + 1 + _length(text_length)
    if (
        title_end == start
        or text_end > len(raw)
        or raw[title_end] != _PIPE
        or (text_end < len(raw) and raw[text_end] != _PIPE)
    ):
        raise _Invalid
    event: dict[str, object] = {
        "title": raw[start:title_end].decode().replace("\\n", "\n"),
        "text": raw[title_end + 1 : text_end].decode().replace("\\n", "\n"),
    }
    if text_end < len(raw):
        event.update(_fields(raw[text_end + 1 :].decode().split("|"), 0, _EVENT_FIELDS))
    return event


def _service_check(line: str) -> dict[str, object]:
    fields = line.split("|")  # fields[0] is "_sc"
    if len(fields) < 3 or not fields[1]:
        raise _Invalid
    status = _SERVICE_CHECK_STATUS.get(fields[2])
    if status is None:
        raise _Invalid
    check: dict[str, object] = {"name": fields[1], "status": status}
    if len(fields) > 3:
        check.update(_fields(fields, 3, _SERVICE_CHECK_FIELDS))
    return check


# A field table: prefix -> (prefix length, event key, conversion of the rest).
# A conversion raises _Invalid for a bad value and returns None for "absent"
# (a tags field without a tag).
_FieldTable = dict[str, tuple[int, str, Callable[[str], object]]]


def _fields(fields: list[str], start: int, table: _FieldTable) -> dict[str, object]:
    found: dict[str, object] = {}
    for field in fields[start:]:
        # Prefixes are 1 ("#", "@", "T"), 2 ("c:", "d:", ...) or 5 ("card:") long.
        spec = table.get(field[:1]) or table.get(field[:2]) or table.get(field[:5])
        if spec is None:
            continue
        size, key, convert = spec
        value = convert(field[size:])
        if value is None:
            found.pop(key, None)
        else:
            found[key] = value
    return found


def _field_table(*specs: tuple[str, str, Callable[[str], object]]) -> _FieldTable:
    return {prefix: (len(prefix), key, convert) for prefix, key, convert in specs}


def _number(text: str) -> int | float | None:
    """The int or float ``text`` spells as a decimal number, or None."""
    if text.isdigit() and text.isascii() and len(text) <= _MAX_INT_DIGITS:
        return int(text)  # the common case first: an unsigned int
    if text[:1] in ("+", "-") and text[1:].isdigit() and text.isascii():
        if len(text) <= _MAX_INT_DIGITS + 1:
            return int(text)
    elif _DECIMAL.fullmatch(text) is None:
        return None
    value = float(text)
    return None if math.isinf(value) else value


def _sample_rate(text: str) -> int | float:
    rate = _number(text)
    if rate is None or not 0 < rate <= 1:
        raise _Invalid
    return rate


def _timestamp(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_INT_DIGITS):
        raise _Invalid
    seconds = int(text)
    if seconds == 0:
        raise _Invalid
    return seconds


def _length(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= _MAX_LENGTH_DIGITS):  # bytes.isdigit: ASCII only
        raise _Invalid
    return int(text)


def _tags(text: str) -> Tags | None:
    tags: Tags = {}
    repeated = False
    for tag in text.split(","):
        if not tag:
            continue
        key, colon, value = tag.partition(":")
        tag_value = value if colon else None
        if key not in tags:
            tags[key] = tag_value
            continue
        repeated = True
        values = tags[key]
        if isinstance(values, list):
            values.append(tag_value)
        else:
            tags[key] = [values, tag_value]
    if repeated:
        # A tag sent twice is one tag; dict.fromkeys drops repeats in linear
        # time, keeping the order sent.
        for key, values in tags.items():
            if isinstance(values, list):
                kept = list(dict.fromkeys(values))
                tags[key] = kept if len(kept) > 1 else kept[0]
    return tags or None


def _priority(text: str) -> str:
    if text not in _PRIORITIES:
        raise _Invalid
    return text


def _alert_type(text: str) -> str:
    if text not in _ALERT_TYPES:
        raise _Invalid
    return text


def _check_message(text: str) -> str:
    return text.replace("\\n", "\n").replace("m\\:", "m:")


_ORIGIN_FIELDS = (
    ("#", "tags", _tags),
    ("c:", "container_id", str),
    ("e:", "external_data", str),
    ("card:", "cardinality", str),
)
_METRIC_FIELDS = _field_table(
    ("@", "sample_rate", _sample_rate), ("T", "timestamp", _timestamp), *_ORIGIN_FIELDS
)
_EVENT_FIELDS = _field_table(
    ("d:", "timestamp", _timestamp),
    ("h:", "hostname", str),
    ("k:", "aggregation_key", str),
    ("p:", "priority", _priority),
    ("s:", "source_type", str),
    ("t:", "alert_type", _alert_type),
    *_ORIGIN_FIELDS,
)
_SERVICE_CHECK_FIELDS = _field_table(
    ("d:", "timestamp", _timestamp),
    ("h:", "hostname", str),
    ("m:", "message", _check_message),
    *_ORIGIN_FIELDS,
)
