"""decode_datagram: one event or NDJSON lines in, original bytes and reject reasons out."""

from __future__ import annotations

import json
from collections import defaultdict

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import MAX_DATAGRAM_CEILING
from ingest.receive.codec import (
    MAX_DECODED_BYTES,
    REJECT_REASONS,
    count_events,
    decode_datagram,
    decode_messages,
    messages_decoder,
)
from ingest.receive.wakeup import WakeUp
from ingest.vocabulary import Reject


def decode(data: bytes) -> tuple[int, list[bytes], dict[str, int]]:
    out: list[bytes] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    count = decode_datagram(data, out, rejected)
    return count, out, dict(rejected)


# ----------------------------------------------------------------- examples
def test_single_event_kept_byte_for_byte() -> None:
    data = b'{ "b" : 2,\t"a":[1, 2.50, "\\u00e9"] }'  # odd spacing, escapes, 2.50
    assert decode(data) == (1, [data], {})


def test_single_event_with_surrounding_whitespace_is_kept_as_sent() -> None:
    data = b'  {"a":1} \t'
    assert decode(data) == (1, [data], {})


def test_ndjson_lines_each_become_an_event() -> None:
    lines = [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert decode(b"\n".join(lines)) == (3, lines, {})
    assert decode(b"\n".join(lines) + b"\n") == (3, lines, {})  # trailing newline


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"\t", b"\r", b"\n", b"\n\n\n", b" \t\r\n\r\n  ", b"\r\n"],
)
def test_blank_datagrams_and_lines_are_not_events(data: bytes) -> None:
    assert decode(data) == (0, [], {})


def test_blank_lines_between_events_are_ignored() -> None:
    data = b'\n{"a":1}\n\n  \n\t\r\n{"b":2}\n'
    assert decode(data) == (2, [b'{"a":1}', b'{"b":2}'], {})


def test_crlf_lines_keep_their_carriage_return() -> None:
    """As implemented: lines split on LF only; the CR is JSON whitespace, so the
    event is valid and forwarded as sent, trailing CR included."""
    assert decode(b'{"a":1}\r\n{"b":2}\r\n') == (2, [b'{"a":1}\r', b'{"b":2}\r'], {})
    assert decode(b'{"a":1}\r') == (1, [b'{"a":1}\r'], {})


def test_a_lone_cr_does_not_separate_events() -> None:
    assert decode(b'{"a":1}\r{"b":2}') == (1, [], {Reject.INVALID_JSON: 1})


def test_bad_line_does_not_spoil_good_ones() -> None:
    data = b'{"ok":1}\n{"broken":\n[1,2]\n{"ok":2}\n"str"\n\xff\xfe\n{"ok":3}'
    assert decode(data) == (
        7,
        [b'{"ok":1}', b'{"ok":2}', b'{"ok":3}'],
        {Reject.INVALID_JSON: 1, Reject.NOT_OBJECT: 2, Reject.INVALID_UTF8: 1},
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", Reject.INVALID_JSON),
        (b'{"a":1}}', Reject.INVALID_JSON),
        (b'{"a":1} {"b":2}', Reject.INVALID_JSON),  # two objects on one line
        (b"{'a':1}", Reject.INVALID_JSON),
        (b'{"a":NaN}', Reject.INVALID_JSON),
        (b'{"a":Infinity}', Reject.INVALID_JSON),
        (b'\xef\xbb\xbf{"a":1}', Reject.INVALID_JSON),  # a UTF-8 BOM is not JSON whitespace
        (b'\x0c{"a":1}', Reject.INVALID_JSON),  # neither is a form feed
        (b'{"a":"\\ud800"}', Reject.INVALID_JSON),  # a lone surrogate escape
        (b'{"a":"\xff"}', Reject.INVALID_UTF8),
        (b'{"a":"\xc3"}', Reject.INVALID_UTF8),  # truncated sequence
        (b'{"a":"\xed\xa0\x80"}', Reject.INVALID_UTF8),  # an encoded surrogate
        (b"\x80", Reject.INVALID_UTF8),
        (b"[]", Reject.NOT_OBJECT),
        (b"[{}]", Reject.NOT_OBJECT),
        (b'"{}"', Reject.NOT_OBJECT),
        (b"1", Reject.NOT_OBJECT),
        (b"null", Reject.NOT_OBJECT),
        (b"true", Reject.NOT_OBJECT),
    ],
)
def test_reject_reasons(data: bytes, reason: str) -> None:
    assert decode(data) == (1, [], {reason: 1})
    # The same line inside an NDJSON datagram gets the same reason.
    assert decode(b'{"x":1}\n' + data) == (2, [b'{"x":1}'], {reason: 1})


def test_nul_bytes() -> None:
    escaped = b'{"a":"\\u0000"}'
    assert decode(escaped) == (1, [escaped], {})  # an escaped NUL is valid JSON
    assert decode(b'{"a":"\x00"}') == (1, [], {Reject.INVALID_JSON: 1})  # a raw one is not
    assert decode(b'{"a":1}\x00') == (1, [], {Reject.INVALID_JSON: 1})
    assert decode(b"\x00") == (1, [], {Reject.INVALID_JSON: 1})
    assert decode(b"\x00\n" + escaped) == (2, [escaped], {Reject.INVALID_JSON: 1})


def test_deep_nesting_up_to_orjsons_limit() -> None:
    """orjson accepts 1024 levels and rejects deeper input (invalid_json) without
    recursing into the C stack: a hostile datagram cannot crash the daemon."""
    ok = b'{"a":' * 1024 + b"1" + b"}" * 1024
    assert decode(ok) == (1, [ok], {})
    too_deep = b'{"a":' * 1025 + b"1" + b"}" * 1025
    assert decode(too_deep) == (1, [], {Reject.INVALID_JSON: 1})
    hostile = b"[" * 1_000_000
    assert decode(hostile) == (1, [], {Reject.INVALID_JSON: 1})
    assert decode(b"[" * 1024 + b"]" * 1024) == (1, [], {Reject.NOT_OBJECT: 1})


def test_huge_numbers() -> None:
    """Integers beyond 64 bits are accepted and forwarded as sent (no precision
    lost: the original bytes are the message); numbers outside a double's range
    are rejected by orjson."""
    for data in (
        b'{"a":18446744073709551616}',
        b'{"a":-9223372036854775809}',
        b'{"a":123456789012345678901234567890}',
        b'{"a":1e308}',
        b'{"a":1e-400}',
    ):
        assert decode(data) == (1, [data], {}), data
    for data in (b'{"a":1e400}', b'{"a":' + b"9" * 400 + b"}"):
        assert decode(data) == (1, [], {Reject.INVALID_JSON: 1}), data


def test_large_datagram_of_many_lines() -> None:
    lines = [orjson.dumps({"i": i, "pad": "x" * (i % 50)}) for i in range(5000)]
    assert decode(b"\n".join(lines)) == (5000, lines, {})


# ------------------------------------------------------------------ properties
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@st.composite
def object_lines(draw: st.DrawFn) -> bytes:
    """One JSON object, serialised in one of several legal ways, on one line."""
    obj = draw(json_objects)
    style = draw(st.sampled_from(["orjson", "compact", "default", "spaced", "ascii"]))
    if style == "orjson":
        line = orjson.dumps(obj)
    elif style == "compact":
        line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    elif style == "default":
        line = json.dumps(obj).encode()  # ", " and ": ", \\u escapes
    elif style == "spaced":
        line = json.dumps(obj, separators=(" , ", " :\t"), ensure_ascii=False).encode()
    else:
        line = json.dumps(obj, ensure_ascii=True, sort_keys=True).encode()
    pad = st.sampled_from([b"", b" ", b"\t", b"\r", b" \t "])
    return draw(pad) + line + draw(pad)


non_object_lines = st.one_of(
    json_leaves.map(orjson.dumps),
    st.lists(json_values, max_size=3).map(orjson.dumps),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    object_lines().map(lambda line: line[:-1] if len(line.strip()) > 2 else line + b"]"),
)


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _is_object(line: bytes) -> bool:
    return _parses(line) and type(orjson.loads(line)) is dict


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _expected(data: bytes) -> tuple[int, list[bytes], dict[str, int]]:
    """The contract, restated line by line (orjson is the parser of record)."""
    lines = [line for line in data.split(b"\n") if line.strip(b" \t\r")]
    out = [line for line in lines if _is_object(line)]
    reasons: dict[str, int] = {}
    for line in lines:
        if _is_object(line):
            continue
        if _parses(line):
            reason = Reject.NOT_OBJECT
        elif _is_utf8(line):
            reason = Reject.INVALID_JSON
        else:
            reason = Reject.INVALID_UTF8
        reasons[reason] = reasons.get(reason, 0) + 1
    return len(lines), out, reasons


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_every_line_is_accounted(data: bytes) -> None:
    count, out, rejected = decode(data)
    assert (count, out, rejected) == _expected(data)
    assert count == len(out) + sum(rejected.values())
    assert set(rejected) <= set(REJECT_REASONS)


@settings(max_examples=150, deadline=None)
@given(object_lines())
def test_every_json_object_is_accepted_byte_for_byte(line: bytes) -> None:
    assert decode(line) == (1, [line], {})
    assert decode(line + b"\n" + line) == (2, [line, line], {})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            object_lines().map(lambda line: (line, True)),
            non_object_lines.map(lambda line: (line, False)),
            st.sampled_from([b"", b" ", b"\r", b"\t \r"]).map(lambda line: (line, False)),
        ),
        max_size=12,
    )
)
def test_ndjson_mix_accepts_objects_and_rejects_the_rest(items: list[tuple[bytes, bool]]) -> None:
    data = b"\n".join(line for line, _ in items)
    count, out, rejected = decode(data)
    assert (count, out, rejected) == _expected(data)
    assert set(rejected) <= set(REJECT_REASONS)
    # Every generated object line survives, in order, exactly as sent.
    remaining = iter(out)
    assert all(any(line == got for got in remaining) for line, is_object in items if is_object)


def datagrams_of(lines: list[bytes]) -> st.SearchStrategy[bytes]:
    """Datagrams of up to 12 of ``lines`` (objects, non-objects, blanks,
    bad bytes), or arbitrary bytes."""
    return st.lists(st.sampled_from(lines), max_size=12).map(b"\n".join) | st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(datagrams_of([b"{}", b"[1]", b"x", b"", b" ", b"\r", b"\t \r", b" {} ", b"\xff"]))
def test_count_events_agrees_with_decoding(data: bytes) -> None:
    """What a reader counts without decoding (the queue is full) is exactly
    what decoding would have counted: the identity holds either way."""
    assert count_events(data) == decode(data)[0]


@settings(max_examples=300, deadline=None)
@given(
    datagrams_of([b'{"a":1}', b"[1]", b"x", b"", b" ", b"\r", b" {} ", b"\xff", b"{}"]),
    st.booleans(),
)
def test_decode_messages_counts_exactly_as_decode_datagram(data: bytes, bound: bool) -> None:
    """The attributes pipeline's decoder accepts, rejects and counts the same
    lines as the plain one, and hands each accepted line and its object to
    the builder with the wake-up's sender; ``messages_decoder``'s one-line
    shortcut (``bound``) too."""
    built: list[tuple[bytes, object]] = []
    out: list[tuple[tuple[int, bytes], bytes]] = []
    rejected: defaultdict[str, int] = defaultdict(int)

    def build(
        line: bytes, obj: dict[str, object], extra: bytes = b""
    ) -> tuple[tuple[int, bytes], bytes]:
        built.append((line, obj))
        return (0, b""), b"<" + line + extra + b">"

    wake = WakeUp()
    wake.sender = b"|sender"
    if bound:
        count = messages_decoder(build)(data, out, rejected, wake)
    else:
        count = decode_messages(data, out, rejected, wake, build)
    plain_count, plain_out, plain_rejected = decode(data)
    assert (count, dict(rejected)) == (plain_count, plain_rejected)
    assert out == [((0, b""), b"<" + line + b"|sender>") for line in plain_out]
    assert [line for line, _ in built] == plain_out
    assert all(obj == json.loads(line) for line, obj in built)


# ------------------------------------------------------- what one datagram may decode to
def test_with_metadata_a_datagrams_messages_stop_at_the_bound() -> None:
    """Every line gets the attributes: 21,845 "{}" lines given 100 bytes each
    would be 2.2 MB. The line that would pass the bound and every later
    non-blank one (bad ones too, undecoded) are rejected, one event each.
    Plain JSON needs no check: its lines are slices of their datagram."""
    assert MAX_DECODED_BYTES >= MAX_DATAGRAM_CEILING
    pad = b"x" * 100

    def build(
        line: bytes, obj: dict[str, object], extra: bytes = b""
    ) -> tuple[tuple[int, bytes], bytes]:
        return (0, b""), line + extra + pad

    body = len(b"{}" + pad)
    kept = MAX_DECODED_BYTES // body
    data = b"{}\n" * kept + b"[1]\n" + b"{}\n" * 20 + b"nope\n \n"
    for bound in (False, True):
        out: list[tuple[tuple[int, bytes], bytes]] = []
        rejected: defaultdict[str, int] = defaultdict(int)
        wake = WakeUp()
        if bound:
            count = messages_decoder(build)(data, out, rejected, wake)
        else:
            count = decode_messages(data, out, rejected, wake, build)
        assert len(out) == kept
        assert wake.written == sum(len(b) for _, b in out) == kept * body <= MAX_DECODED_BYTES
        assert dict(rejected) == {Reject.NOT_OBJECT: 1, Reject.DECODED_TOO_LARGE: 21}
        assert count == kept + 1 + 20 + 1
