"""decode_statsd: statsd and DogStatsD lines in, one JSON event per sample out.

The "captured" bytes below were sent by the real clients to a UDP socket on
127.0.0.1 and copied here byte for byte: pystatsd ``statsd`` 4.0.1
(``StatsClient``) and Datadog's ``datadog`` 0.56.0 (``DogStatsd``, telemetry
and origin detection off unless said). Neither is a dependency of ingest.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pipeline.message import MessageBuilder
from ingest.publish.pubsub import data_of
from ingest.receive.codec import MAX_DECODED_BYTES, Build
from ingest.receive.statsd import (
    REJECT_REASONS,
    decode_statsd,
    looks_like_statsd,
)
from ingest.receive.wakeup import WakeUp
from ingest.vocabulary import Reject

Event = dict[str, object]
ALL_REASONS = frozenset((*REJECT_REASONS, Reject.INVALID_UTF8, Reject.DECODED_TOO_LARGE))


def decode(data: bytes) -> tuple[int, list[Event], dict[str, int]]:
    """Decode and check the contract every call keeps: JSON objects out, the
    returned count is accepted plus rejected, reasons from the vocabulary."""
    out: list[bytes] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    count = decode_statsd(data, out, rejected)
    events = [orjson.loads(event) for event in out]
    assert all(type(event) is bytes for event in out)
    assert all(type(event) is dict for event in events)
    assert count == len(out) + sum(rejected.values())
    assert set(rejected) <= ALL_REASONS
    return count, events, dict(rejected)


def accepted(data: bytes) -> list[Event]:
    count, events, rejected = decode(data)
    assert (count, rejected) == (len(events), {})
    return events


def one(data: bytes) -> Event:
    events = accepted(data)
    assert len(events) == 1
    return events[0]


def reason(data: bytes) -> str:
    """The reason the one line of ``data`` is rejected for."""
    count, events, rejected = decode(data)
    assert (count, events) == (1, [])
    [(why, n)] = rejected.items()
    assert n == 1
    return why


def metric(name: str, value: object, kind: str, **extra: object) -> Event:
    return {"metric": name, "value": value, "type": kind, **extra}


# ------------------------------------------------------- samples from the brief
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a.b:1|c", metric("a.b", 1, "c")),
        (b"a.t:12|ms", metric("a.t", 12, "ms")),
        (b"g:3|g", metric("g", 3, "g")),
        (b"g:-2|g", metric("g", -2, "g", delta=True)),
        (b"g:+2|g", metric("g", 2, "g", delta=True)),
        (b"s:u1|s", metric("s", "u1", "s")),
        (b"h:3.5|h", metric("h", 3.5, "h")),
        (b"d:1.2|d", metric("d", 1.2, "d")),
        (
            b"a.hits:1|c|#env:prod,route:/a",
            metric("a.hits", 1, "c", tags={"env": "prod", "route": "/a"}),
        ),
        (b"a.h:3.5|h|@0.5|#x:y", metric("a.h", 3.5, "h", sample_rate=0.5, tags={"x": "y"})),
        (b"a.b:1|c|c:abc123", metric("a.b", 1, "c", container_id="abc123")),
        (b"a.b:1|c|T1700000000", metric("a.b", 1, "c", timestamp=1700000000)),
    ],
)
def test_sample_line_becomes_its_event(line: bytes, expected: Event) -> None:
    assert accepted(line) == [expected]
    assert accepted(line + b"\n") == [expected]


def test_exact_bytes_of_an_event() -> None:
    out: list[bytes] = []
    decode_statsd(b"a.h:3.5|h|@0.5|#x:y\n", out, defaultdict(int))
    assert out == [b'{"metric":"a.h","value":3.5,"type":"h","sample_rate":0.5,"tags":{"x":"y"}}']


def test_multi_value_line_is_one_event_per_value() -> None:
    assert decode(b"a.h:1:2:3|h") == (
        3,
        [metric("a.h", 1, "h"), metric("a.h", 2, "h"), metric("a.h", 3, "h")],
        {},
    )


def test_multi_value_line_repeats_its_fields_in_every_event() -> None:
    tags = {"env": "prod"}
    assert accepted(b"a.d:1.5:-2|d|@0.5|#env:prod|T1700000000") == [
        metric("a.d", 1.5, "d", sample_rate=0.5, tags=tags, timestamp=1700000000),
        metric("a.d", -2, "d", sample_rate=0.5, tags=tags, timestamp=1700000000),
    ]


def test_multi_value_gauge_marks_each_signed_value_a_delta() -> None:
    assert accepted(b"g:5:-1:+2|g") == [
        metric("g", 5, "g"),
        metric("g", -1, "g", delta=True),
        metric("g", 2, "g", delta=True),
    ]


@pytest.mark.parametrize(
    "line", [b"a.h:1:x:3|h", b"a.h:1::3|h", b"a.h:1:2:|h", b"a.h::1|h", b"a.h:1:nan|h"]
)
def test_multi_value_line_with_a_bad_value_is_one_reject(line: bytes) -> None:
    assert reason(line) == Reject.INVALID_STATSD


def test_set_value_is_text_and_keeps_its_colons() -> None:
    assert one(b"users:u1:42|s") == metric("users", "u1:42", "s")
    assert one(b"users:12|s") == metric("users", "12", "s")  # a string, not a number


# ------------------------------------------------------------ real clients
@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        # StatsClient: incr, incr(rate=0.999999), decr(2), timing(12), timing(3.25)
        (b"a.b:1|c", [metric("a.b", 1, "c")]),
        (b"req:1|c|@0.999999", [metric("req", 1, "c", sample_rate=0.999999)]),
        (b"a.b:-2|c", [metric("a.b", -2, "c")]),  # a counter's sign is not a delta
        (b"a.t:12.000000|ms", [metric("a.t", 12.0, "ms")]),
        (b"a.t:3.250000|ms", [metric("a.t", 3.25, "ms")]),
        # gauge(3), gauge(2, delta=True), gauge(-2, delta=True), gauge(1.5)
        (b"g:3|g", [metric("g", 3, "g")]),
        (b"g:+2|g", [metric("g", 2, "g", delta=True)]),
        (b"g:-2|g", [metric("g", -2, "g", delta=True)]),
        (b"g:1.5|g", [metric("g", 1.5, "g")]),
        # gauge(-5): a negative value can only be set by zeroing, then a delta
        (b"g:0|g\ng:-5|g", [metric("g", 0, "g"), metric("g", -5, "g", delta=True)]),
        (b"s:u1|s", [metric("s", "u1", "s")]),
        # a pipeline: incr, timing(7), gauge(4) in one datagram
        (
            b"p.a:1|c\np.t:7.000000|ms\np.g:4|g",
            [metric("p.a", 1, "c"), metric("p.t", 7.0, "ms"), metric("p.g", 4, "g")],
        ),
    ],
)
def test_pystatsd_4_0_1(datagram: bytes, expected: list[Event]) -> None:
    assert accepted(datagram) == expected


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (
            b"a.hits:1|c|#env:prod,route:/a\n",
            [metric("a.hits", 1, "c", tags={"env": "prod", "route": "/a"})],
        ),
        (b"a.h:3.5|h|#x:y\n", [metric("a.h", 3.5, "h", tags={"x": "y"})]),
        (
            b"a.h:3.5|h|@0.5|#x:y\n",
            [metric("a.h", 3.5, "h", sample_rate=0.5, tags={"x": "y"})],
        ),
        (b"g:3|g\n", [metric("g", 3, "g")]),
        # count_with_timestamp, gauge_with_timestamp
        (b"files:124|c|T1700000000\n", [metric("files", 124, "c", timestamp=1700000000)]),
        (b"g.ts:7|g|T1700000000\n", [metric("g.ts", 7, "g", timestamp=1700000000)]),
        (b"d:1.2|d\n", [metric("d", 1.2, "d")]),
        (b"s:u1|s\n", [metric("s", "u1", "s")]),
        (b"a.t:12|ms\n", [metric("a.t", 12, "ms")]),
        (b"a.hits:-1|c\n", [metric("a.hits", -1, "c")]),
        # tags=["flag", "a:b:c", "k,v:1"]: the client turns "," into "_"
        (
            b"flagged:1|c|#flag,a:b:c,k_v:1\n",
            [metric("flagged", 1, "c", tags={"flag": None, "a": "b:c", "k_v": "1"})],
        ),
        # DogStatsd(container_id="abc123", cardinality="low")
        (
            b"a.c:1|c|c:abc123|card:low\n",
            [metric("a.c", 1, "c", container_id="abc123", cardinality="low")],
        ),
        # disable_buffering=False: increment, gauge(7), histogram(0.25), one flush
        (
            b"b.1:1|c\nb.2:7|g\nb.3:0.25|h\n",
            [metric("b.1", 1, "c"), metric("b.2", 7, "g"), metric("b.3", 0.25, "h")],
        ),
    ],
)
def test_datadogpy_0_56_0_metrics(datagram: bytes, expected: list[Event]) -> None:
    assert accepted(datagram) == expected


def test_datadogpy_0_56_0_event_with_every_field() -> None:
    # event("Man down!", "This server needs\nassistance | now", alert_type="error",
    #       priority="low", tags=["env:prod"], hostname="web1", aggregation_key="k1",
    #       source_type_name="my_apps", date_happened=1700000000)
    assert one(
        b"_e{9,35}:Man down!|This server needs\\nassistance | now|d:1700000000|h:web1"
        b"|k:k1|p:low|s:my_apps|t:error|#env:prod\n"
    ) == {
        "event": {
            "title": "Man down!",
            "text": "This server needs\nassistance | now",
            "timestamp": 1700000000,
            "hostname": "web1",
            "aggregation_key": "k1",
            "priority": "low",
            "source_type": "my_apps",
            "alert_type": "error",
            "tags": {"env": "prod"},
        }
    }


def test_datadogpy_0_56_0_event_lengths_count_utf8_bytes() -> None:
    # event("Café ☕", "")
    assert one("_e{9,0}:Café ☕|\n".encode()) == {"event": {"title": "Café ☕", "text": ""}}


def test_datadogpy_0_56_0_service_checks() -> None:
    # service_check("my.check", WARNING, tags=["env:prod"], timestamp=1700000000,
    #               hostname="web1", message="disk m: 91%\nsee runbook")
    assert one(b"_sc|my.check|1|d:1700000000|h:web1|#env:prod|m:disk m\\: 91%\\nsee runbook\n") == {
        "service_check": {
            "name": "my.check",
            "status": 1,
            "timestamp": 1700000000,
            "hostname": "web1",
            "tags": {"env": "prod"},
            "message": "disk m: 91%\nsee runbook",
        }
    }
    # service_check("ok.check", OK)
    assert one(b"_sc|ok.check|0\n") == {"service_check": {"name": "ok.check", "status": 0}}


def test_datadogpy_0_56_0_origin_fields_on_events_and_service_checks() -> None:
    # DogStatsd(container_id="abc123", cardinality="low"): event("t", "x"), service_check("c", 0)
    origin = {"container_id": "abc123", "cardinality": "low"}
    assert one(b"_e{1,1}:t|x|c:abc123|card:low\n") == {
        "event": {"title": "t", "text": "x", **origin}
    }
    assert one(b"_sc|c|0|c:abc123|card:low\n") == {
        "service_check": {"name": "c", "status": 0, **origin}
    }


# ------------------------------------------------------- datagrams and lines
def test_lines_each_become_events_blank_lines_skipped() -> None:
    data = b"\na:1|c\n\n  \n\t\r\nb:2|g\n\n"
    assert decode(data) == (2, [metric("a", 1, "c"), metric("b", 2, "g")], {})


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n\n", b" ", b"\t\r\n \n", b"\r\n"])
def test_blank_datagrams_hold_no_event(data: bytes) -> None:
    assert decode(data) == (0, [], {})


def test_bad_line_does_not_spoil_the_good_ones() -> None:
    data = b"a:1|c\nnot statsd\nb:x|c\n\xff\xfe:1|c\nc:1|kv\nd:1:2|h\n"
    assert decode(data) == (
        7,
        [metric("a", 1, "c"), metric("d", 1, "h"), metric("d", 2, "h")],
        {Reject.INVALID_STATSD: 2, Reject.INVALID_UTF8: 1, Reject.UNSUPPORTED_STATSD: 1},
    )


def test_lines_lose_one_trailing_cr_and_nothing_else() -> None:
    assert accepted(b"a:1|c\r\nb:2|c\r\n") == [metric("a", 1, "c"), metric("b", 2, "c")]
    assert one(b"s:x|s|#a:b\r") == metric("s", "x", "s", tags={"a": "b"})
    assert one(b"_e{1,1}:t|x\r") == {"event": {"title": "t", "text": "x"}}
    assert reason(b"a:1|c\r\r") == Reject.INVALID_STATSD  # "c\r" is no type
    assert reason(b"a:1|c ") == Reject.INVALID_STATSD
    assert one(b" a:1|c") == metric(" a", 1, "c")  # a name is what precedes ":"


# ------------------------------------------------------------------ values
@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-0", 0),
        (b"+7", 7),
        (b"007", 7),
        (b"999999999999999999", 999999999999999999),  # 18 digits: an int
        (b"-999999999999999999", -999999999999999999),
        (b"9999999999999999999", 1e19),  # 19 digits: a float, as any JSON reader has it
        (b"12.000000", 12.0),  # integral value, not integral text: a float
        (b"1.", 1.0),
        (b".5", 0.5),
        (b"-1.5", -1.5),
        (b"1e3", 1000.0),
        (b"2.5E-3", 0.0025),
        (b"1e308", 1e308),
    ],
)
def test_numbers(text: bytes, value: float) -> None:
    event = one(b"h:" + text + b"|h")
    assert event["value"] == value
    assert type(event["value"]) is type(value)


@pytest.mark.parametrize(
    "text",
    [
        b"nan",
        b"NaN",
        b"-nan",
        b"inf",
        b"-inf",
        b"Infinity",
        b"1e309",
        b"-1e999",
        b"9" * 400,  # integral text past the float range
        b"1_000",
        b" 1",
        b"1 ",
        b"0x10",
        b"1e",
        b".",
        b"+",
        b"-",
        b"--1",
        b"1.2.3",
        b"\xd9\xa1",  # ARABIC-INDIC DIGIT ONE: int() and float() would take it
        b"\xc2\xb2",  # SUPERSCRIPT TWO: str.isdigit() says yes
        b"one",
    ],
)
def test_non_numbers_are_invalid(text: bytes) -> None:
    for kind in (b"c", b"g", b"ms", b"h", b"d"):
        assert reason(b"a:" + text + b"|" + kind) == Reject.INVALID_STATSD


def test_only_gauges_have_deltas() -> None:
    assert one(b"c:+1|c") == metric("c", 1, "c")
    assert one(b"t:-1|ms") == metric("t", -1, "ms")
    assert one(b"g:-0.5|g") == metric("g", -0.5, "g", delta=True)
    assert one(b"g:+0|g") == metric("g", 0, "g", delta=True)  # "+0" is a delta of 0


# -------------------------------------------------------- types and syntax
@pytest.mark.parametrize("kind", [b"kv", b"m", b"C", b"G", b"e", b"msx"])
def test_unknown_metric_type_is_unsupported(kind: bytes) -> None:
    assert reason(b"a:1|" + kind) == Reject.UNSUPPORTED_STATSD


@pytest.mark.parametrize(
    "line",
    [
        b"a",
        b"a:1",
        b"a|c",
        b":1|c",
        b"a:|c",
        b"a:1|",
        b"a:1||c",
        b"a:1|c1",
        b"a:1|@0.5",
        b"a:1|c:2|c",  # etsy's several typed values per line: not supported
        b"|",
        b"::|c",
        b"_e{",
        b"_sc|",
        b"_sc|name",
        # service checks: a status other than 0-3, a missing name, a bad timestamp
        b"_sc|disk|4",
        b"_sc|disk|-1",
        b"_sc|disk|01",
        b"_sc|disk|ok",
        b"_sc|disk|",
        b"_sc||0",
        b"_sc|disk",
        b"_sc|disk|0|d:x",
        b"_sc|disk|0|d:0",
    ],
)
def test_malformed_lines_are_invalid(line: bytes) -> None:
    assert reason(line) == Reject.INVALID_STATSD


def test_names_starting_like_events_are_metrics_unless_they_are_events() -> None:
    assert one(b"_sc:1|c") == metric("_sc", 1, "c")
    assert one(b"_e:1|c") == metric("_e", 1, "c")
    assert one(b"_:1|c") == metric("_", 1, "c")


def test_unknown_and_empty_fields_are_ignored() -> None:
    assert one(b"a:1|c|x:1|ZZ||card|@0.5|") == metric("a", 1, "c", sample_rate=0.5)


def test_a_field_given_twice_counts_the_last_time() -> None:
    assert one(b"a:1|c|@0.5|#x:1|@0.25|#y:2") == metric(
        "a", 1, "c", sample_rate=0.25, tags={"y": "2"}
    )
    assert one(b"a:1|c|#x:1|#") == metric("a", 1, "c")


def test_event_keys_follow_the_field_order_of_the_line() -> None:
    first = list(one(b"a:1|c|T1700000000|c:id|#x:y|@0.5"))
    assert first == ["metric", "value", "type", "timestamp", "container_id", "tags", "sample_rate"]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (b"@0.5", 0.5),
        (b"@1", 1),
        (b"@1.0", 1.0),
        (b"@.25", 0.25),
        (b"@1e-3", 0.001),
        (b"@0.999999", 0.999999),
    ],
)
def test_sample_rates(field: bytes, expected: float) -> None:
    event = one(b"a:1|c|" + field)
    assert event["sample_rate"] == expected
    assert type(event["sample_rate"]) is type(expected)


@pytest.mark.parametrize(
    "field", [b"@x", b"@", b"@0", b"@0.0", b"@-0.5", b"@1.5", b"@2", b"@nan", b"@inf", b"@ 0.5"]
)
def test_invalid_sample_rates(field: bytes) -> None:
    # rate 0 would divide by zero when scaling up, past 1 means nothing
    assert reason(b"a:1|c|" + field) == Reject.INVALID_STATSD


@pytest.mark.parametrize(
    "field", [b"T", b"T0", b"T-5", b"T+5", b"T1.5", b"Tx", b"T" + b"1" * 19, b"T\xd9\xa1"]
)
def test_invalid_timestamps(field: bytes) -> None:
    assert reason(b"a:1|c|" + field) == Reject.INVALID_STATSD


def test_origin_fields_are_kept_as_sent() -> None:
    assert one(b"a:1|c|c:ci-abc,in-12|e:it-false,cn-web|card:high") == metric(
        "a",
        1,
        "c",
        container_id="ci-abc,in-12",
        external_data="it-false,cn-web",
        cardinality="high",
    )


# -------------------------------------------------------------------- tags
@pytest.mark.parametrize(
    ("field", "tags"),
    [
        (b"#a:b:c", {"a": "b:c"}),  # split at the first colon only
        (b"#flag", {"flag": None}),  # a bare tag: a tag without a value
        (b"#flag:", {"flag": ""}),  # an empty value is not no value
        (b"#:v", {"": "v"}),
        (b"#a:1,,b:2", {"a": "1", "b": "2"}),
        (b"#,a:1,", {"a": "1"}),
        (b"#a:1,a:2", {"a": ["1", "2"]}),  # Datadog's multi-valued tags: all kept
        (b"#a:1,b:2,a:3,a:1", {"a": ["1", "3"], "b": "2"}),  # an exact repeat is one tag
        (b"#a:1,a:1", {"a": "1"}),
        (b"#flag,flag:x,flag", {"flag": [None, "x"]}),
        (
            b"#env:prod,ROUTE:/a b,\xc3\xa9t\xc3\xa9:\xe2\x98\x80",
            {"env": "prod", "ROUTE": "/a b", "été": "☀"},
        ),
    ],
)
def test_tags(field: bytes, tags: dict[str, object]) -> None:
    assert one(b"a:1|c|" + field) == metric("a", 1, "c", tags=tags)


@pytest.mark.parametrize("field", [b"#", b"#,", b"#,,", b"#,,,"])
def test_a_tags_field_without_tags_gives_no_tags_key(field: bytes) -> None:
    assert one(b"a:1|c|" + field) == metric("a", 1, "c")


# -------------------------------------------------------------- UTF-8
def test_non_utf8_lines_are_invalid_utf8_whatever_else_they_are() -> None:
    assert reason(b"\xff:1|c") == Reject.INVALID_UTF8
    assert reason(b"a:1|c|#env:\xc3") == Reject.INVALID_UTF8
    assert reason(b"s:\xed\xa0\x80|s") == Reject.INVALID_UTF8  # an encoded surrogate
    assert reason(b"\xff\xff") == Reject.INVALID_UTF8
    assert reason(b"_e{1,1}:\xff|x") == Reject.INVALID_UTF8


def test_utf8_names_values_and_tags_are_kept() -> None:
    assert one("requêtes:1|c|#ville:Zürich".encode()) == metric(
        "requêtes", 1, "c", tags={"ville": "Zürich"}
    )
    assert one("visiteurs:Zoë|s".encode()) == metric("visiteurs", "Zoë", "s")


# ---------------------------------------------------------------- events
def test_event_title_and_text_may_hold_pipes_and_escaped_newlines() -> None:
    assert one(b"_e{5,7}:a|b|c|d\\n|e|f|#x:y") == {
        "event": {"title": "a|b|c", "text": "d\n|e|f", "tags": {"x": "y"}}
    }


def test_event_ignores_unknown_fields_and_validates_known_ones() -> None:
    assert one(b"_e{1,1}:t|x|zz|p:normal|t:success") == {
        "event": {"title": "t", "text": "x", "priority": "normal", "alert_type": "success"}
    }
    for field in (b"p:high", b"t:fatal", b"d:x", b"d:0"):
        assert reason(b"_e{1,1}:t|x|" + field) == Reject.INVALID_STATSD, field


@pytest.mark.parametrize(
    "line",
    [
        b"_e{0,1}:|x",  # an empty title
        b"_e{1,1}:t",  # shorter than its lengths
        b"_e{1,2}:t|x",
        b"_e{2,1}:t|x",  # the title's length ends inside the text
        b"_e{1,1}:tx|",  # no "|" after the title
        b"_e{1,1}:t|xy",  # the text is longer than its length
        b"_e{1,1}:t|xy|d:1",
        b"_e{1}:t|x",
        b"_e{,1}:t|x",
        b"_e{1,}:t|",
        b"_e{a,1}:t|x",
        b"_e{-1,1}:t|x",
        b"_e{+1,1}:t|x",
        b"_e{1,1}t|x",
        b"_e{1,1:t|x",
        b"_e{1 ,1}:t|x",
        b"_e{1234567890,1}:t|x",  # more digits than any datagram needs
        b"_e{99999999,1}:t|x",
        b"_e{1,1}",
    ],
)
def test_malformed_events_are_invalid(line: bytes) -> None:
    assert reason(line) == Reject.INVALID_STATSD


def test_event_lengths_that_cut_a_character_do_not_match() -> None:
    # "é" is 2 bytes: a title length of 1 ends inside it, so no "|" follows
    assert reason("_e{1,1}:é|x".encode()) == Reject.INVALID_STATSD
    assert one("_e{2,4}:é|x☕".encode()) == {"event": {"title": "é", "text": "x☕"}}


# --------------------------------------------------------- service checks
@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_service_check_statuses(status: int) -> None:
    assert one(b"_sc|disk|%d" % status) == {"service_check": {"name": "disk", "status": status}}


def test_service_check_message_unescapes_and_unknown_fields_are_ignored() -> None:
    assert one(b"_sc|a.b|2|zz|m:line 1\\nm\\: 2|h:db1") == {
        "service_check": {
            "name": "a.b",
            "status": 2,
            "message": "line 1\nm: 2",
            "hostname": "db1",
        }
    }


# -------------------------------------------------------------- recognition
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a.b:1|c", True),
        (b"Z:1|c", True),
        (b"9lives:1|c", True),
        (b"_e{1,1}:t|x", True),
        (b"_sc|a|0", True),
        (b"x\x9c", True),  # a zlib stream (GELF) starts with "x": callers check zlib first
        (b"", False),
        (b'{"a":1}', False),
        (b" {}", False),
        (b"\n", False),
        (b"<13>1 - - - - - -", False),
        (b"\x1f\x8b\x08", False),  # gzip (GELF)
        (b"\x1e\x0f", False),  # chunked GELF
        (b"-1:1|c", False),
        (b"\xc3\xa9:1|c", False),
    ],
)
def test_looks_like_statsd(data: bytes, expected: bool) -> None:
    assert looks_like_statsd(data) is expected


def test_reject_reasons_are_the_new_vocabulary() -> None:
    assert REJECT_REASONS == ("invalid_statsd", "unsupported_statsd")
    assert Reject.INVALID_UTF8 not in REJECT_REASONS  # codec.REJECT_REASONS has it


# ------------------------------------------------------- what one datagram may decode to
def many_values(values: int, tags: int, kind: bytes = b"c") -> bytes:
    """The issue's line: each of its values an event carrying every tag."""
    numbers = b":".join(b"%d" % (i % 10) for i in range(values))
    return b"m:" + numbers + b"|" + kind + b"|#" + b",".join(b"t%d" % i for i in range(tags))


def decode_bytes(
    data: bytes, build: Build | None = None
) -> tuple[int, list[bytes], dict[str, int], WakeUp]:
    """decode_statsd's events as bytes (with ``build``, the bodies), and its
    count kept: accepted plus rejected."""
    out: list[Any] = []
    rejected: defaultdict[str, int] = defaultdict(int)
    wake = WakeUp()
    count = decode_statsd(data, out, rejected, build, wake)
    assert count == len(out) + sum(rejected.values())
    items = [item if build is None else item[1] for item in out]
    assert wake.written == sum(map(len, items))
    return count, items, dict(rejected), wake


@pytest.mark.parametrize(
    "data",
    [
        many_values(16000, 4000),  # 55 KB that wrote 777 MiB
        many_values(30000, 1),  # the most samples 64 KB holds
        b"\n".join([many_values(400, 300)] * 20),  # many lines, each under the bound
        b"\n".join([many_values(3000, 20, b"g").replace(b":", b":+", 3000)] * 4),  # deltas
        b"\xff\n" + b"\n".join([many_values(400, 300)] * 20),  # not UTF-8: lines apart
        b"\n".join([b"_e{5,60000}:title|" + b"\x01" * 60000] * 4),  # each 6 times its text
        b"\n".join([b"_sc|c|0|m:" + b"\x01" * 60000] * 4),
        b"\n".join([b"a:1|c|#" + b",".join([b"\x01%d" % i for i in range(20000)])] * 4),
    ],
    ids=["issue", "samples", "lines", "deltas", "apart", "events", "checks", "tags"],
)
def test_what_a_datagram_decodes_to_is_bounded_and_the_rest_rejected_by_name(data: bytes) -> None:
    _, items, rejected, _ = decode_bytes(data)
    assert sum(map(len, items)) <= MAX_DECODED_BYTES
    assert rejected.keys() <= {Reject.DECODED_TOO_LARGE, Reject.INVALID_UTF8}
    assert rejected[Reject.DECODED_TOO_LARGE] > 0
    assert all(type(orjson.loads(item)) is dict for item in items)


def test_the_bound_keeps_the_first_samples_and_counts_the_rest_of_the_datagram() -> None:
    """The event that would pass the bound and all after it are rejected:
    the rest of its line one per value, each later non-blank line one,
    undecoded (a bad line too); the samples before it are published."""
    line = many_values(2000, 100)
    sample = orjson.dumps(
        metric("m", 0, "c", tags=dict.fromkeys((f"t{i}" for i in range(100)), None))
    )
    kept = MAX_DECODED_BYTES // len(sample)
    assert kept < 2000
    count, items, rejected, _ = decode_bytes(b"a:1|c\n" + line + b"\n\nb:2|c\nbad\n \n")
    assert count == 1 + 2000 + 2
    assert items[0] == orjson.dumps(metric("a", 1, "c"))
    assert [orjson.loads(item)["value"] for item in items[1:]] == [i % 10 for i in range(kept)]
    assert len(items) == 1 + kept
    assert rejected == {Reject.DECODED_TOO_LARGE: 2000 - kept + 2}


def test_events_that_fill_the_bound_exactly_are_all_kept() -> None:
    # A sample of exactly 1 KiB, padded by a tag: 1,024 of them are the bound.
    empty = len(orjson.dumps(metric("m", 1, "c", tags={"p": ""})))
    line = b"m:" + b":".join([b"1"] * 1025) + b"|c|#p:" + b"x" * (1024 - empty)
    count, items, rejected, wake = decode_bytes(line)
    assert {len(item) for item in items} == {1024}
    assert (count, len(items), rejected) == (1025, 1024, {Reject.DECODED_TOO_LARGE: 1})
    assert wake.written == MAX_DECODED_BYTES


def test_with_metadata_the_bound_counts_each_message_body() -> None:
    """Every event gets the attributes, so bodies, not events, are what is
    bounded: 30,000 small samples each given 100 bytes of attributes."""
    skipped: defaultdict[str, int] = defaultdict(int)
    builder = MessageBuilder([("pad", "x" * 100)], [("metric", "metric")], skipped)
    data = many_values(30000, 0)
    count, bodies, rejected, _ = decode_bytes(data, builder.build)
    assert sum(map(len, bodies)) <= MAX_DECODED_BYTES
    body = bodies[0]
    assert len(bodies) == MAX_DECODED_BYTES // len(body)
    assert data_of(body) == orjson.dumps(metric("m", 0, "c"))
    assert (count, rejected) == (30000, {Reject.DECODED_TOO_LARGE: 30000 - len(bodies)})
    # The events given to the builder are those the bytes say.
    _, plain, _, _ = decode_bytes(b"m:1:+2|g|@0.5|#a:b,c\n_sc|x|1|m:hi")
    _, built, _, _ = decode_bytes(b"m:1:+2|g|@0.5|#a:b,c\n_sc|x|1|m:hi", builder.build)
    assert [data_of(body) for body in built] == plain


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 60)), min_size=1, max_size=6))
def test_the_bound_cuts_at_the_first_sample_that_would_pass_it(
    shapes: list[tuple[int, int]],
) -> None:
    lines = [(values * 10, tags * 20) for values, tags in shapes]
    samples = []  # (line, its bytes) of every sample, in order
    for index, (values, tags) in enumerate(lines):
        tagged = {"tags": dict.fromkeys((f"t{i}" for i in range(tags)), None)} if tags else {}
        samples += [
            (index, orjson.dumps(metric("m", i % 10, "c", **tagged))) for i in range(values)
        ]
    count, items, rejected, _ = decode_bytes(b"\n".join(many_values(*line) for line in lines))
    kept = len(items)
    assert sum(map(len, items)) <= MAX_DECODED_BYTES
    assert items == [data for _, data in samples[:kept]]
    if kept == len(samples):
        assert (count, rejected) == (kept, {})
        return
    assert sum(len(data) for _, data in samples[: kept + 1]) > MAX_DECODED_BYTES
    cut = samples[kept][0]
    rest = sum(1 for line, _ in samples[kept:] if line == cut) + len(lines) - cut - 1
    assert (count, rejected) == (kept + rest, {Reject.DECODED_TOO_LARGE: rest})


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize(
    "data",
    [
        b"a:" + b":".join([b"1"] * 30000) + b"|h",
        b"a:0." + b"1" * 65000 + b"|h",
        b"a:" + b"9" * 65000 + b"|h",
        b"a:1e" + b"9" * 65000 + b"|h",
        b"a:1|c|#" + b",".join([b"k:%d" % (i % 50) for i in range(12000)]),
        b"a:1|c|#" + b",".join([b"k:v"] * 15000),
        b"a:1|c" + b"|#x" * 20000,
        b"|" * 65000,
        b":" * 65000,
        b"_e{" + b"9" * 65000,
        b"_e{5,5}:" + b"|" * 65000,
        b"_sc|a|0" + b"|m:" * 20000,
        b"\n".join([b"a:1|c"] * 10000),
        b"\xff" + b"\na:1|c" * 10000,
    ],
)
def test_large_hostile_datagrams_take_linear_time(data: bytes) -> None:
    started = time.perf_counter()
    decode(data)
    # Each is 64 KB at most: linear work is a few ms here; quadratic would be minutes.
    assert time.perf_counter() - started < 5


# Fragments of the grammar: joined at random they reach deep into the parser.
_FRAGMENTS = [
    b"a", b"b.c", b"_", b":", b"|", b"#", b"@", b",", b"\n", b"\r", b" ", b"\\n",
    b"0", b"1", b"12", b"-", b"+", b".", b"e", b"E", b"5", b"nan", b"inf",
    b"c", b"g", b"ms", b"h", b"d", b"s", b"T", b"T1700000000", b"c:", b"e:", b"card:",
    b"_e{", b"}", b"_sc|", b"1,1}:", b"d:", b"h:", b"k:", b"p:", b"low", b"t:", b"m:",
    b"\xc3\xa9", b"\xff", b"\xc3", b"\x00", b"{", b'"',
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_and_keep_the_count(data: bytes) -> None:
    decode(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join))
def test_grammar_fragments_never_raise_and_keep_the_count(data: bytes) -> None:
    decode(data)


# A valid metric line and the events it must give (no CR: a line loses a trailing one).
_NAME = st.text("abcxyzABC019._-/", min_size=1, max_size=12).filter(lambda s: s[0] != "_")
_TAG_KEY = st.text(
    st.characters(blacklist_characters=",:|\n\r", codec="utf-8"), min_size=1, max_size=8
)
_TAG_VALUE = st.none() | st.text(
    st.characters(blacklist_characters=",|\n\r", codec="utf-8"), max_size=8
)
_SET_VALUE = st.text(
    st.characters(blacklist_characters="|\n\r", codec="utf-8"), min_size=1, max_size=10
)
_NUMBER = (
    st.integers(-(10**18) + 1, 10**18 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)  # "1.5", "1e+16", "-0.0"
)


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    name = draw(_NAME)
    kind = draw(st.sampled_from(["c", "g", "ms", "h", "d", "s"]))
    samples: list[tuple[str, object, bool]] = []  # text, value, delta
    if kind == "s":
        value = draw(_SET_VALUE)
        samples.append((value, value, False))
    else:
        for number in draw(st.lists(_NUMBER, min_size=1, max_size=4)):
            text = number if isinstance(number, str) else str(number)
            if kind == "g" and draw(st.booleans()) and text[0] != "-":
                text = "+" + text
            value = int(text) if isinstance(number, int) else float(text)
            samples.append((text, value, kind == "g" and text[0] in "+-"))
    fields: list[str] = []
    extra: Event = {}
    if draw(st.booleans()):
        rate = draw(st.floats(min_value=1e-6, max_value=1.0))
        fields.append(f"@{rate!r}")
        extra["sample_rate"] = rate
    tags = draw(st.dictionaries(_TAG_KEY, _TAG_VALUE, max_size=4))
    if tags:
        fields.append("#" + ",".join(k if v is None else f"{k}:{v}" for k, v in tags.items()))
        extra["tags"] = tags
    if draw(st.booleans()):
        fields.append("c:abc123")
        extra["container_id"] = "abc123"
    if draw(st.booleans()):
        ts = draw(st.integers(1, 2**40))
        fields.append(f"T{ts}")
        extra["timestamp"] = ts
    values = ":".join(text for text, _, _ in samples)
    line = "|".join([f"{name}:{values}", kind, *fields])
    events = [
        {
            "metric": name,
            "value": value,
            "type": kind,
            **({"delta": True} if delta else {}),
            **extra,
        }
        for _, value, delta in samples
    ]
    return line.encode(), events


_INVALID_LINES = st.sampled_from(
    [
        b"a",
        b"a:1",
        b"a:x|c",
        b"a:1|kv",
        b"a:1|c|@0",
        b"\xff:1|c",
        b"_e{1,1}:t",
        b"_sc|a|9",
        b"a:1:|h",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(valid_lines(), _INVALID_LINES), max_size=8), st.booleans())
def test_generated_lines_decode_to_their_events(
    lines: list[tuple[bytes, list[Event]] | bytes], trailing_newline: bool
) -> None:
    expected: list[Event] = []
    invalid = 0
    for line in lines:
        if isinstance(line, bytes):
            invalid += 1
        else:
            expected.extend(line[1])
    data = b"\n".join(line if isinstance(line, bytes) else line[0] for line in lines)
    count, events, rejected = decode(data + b"\n" if trailing_newline else data)
    assert count == len(expected) + invalid
    assert sum(rejected.values()) == invalid
    assert events == expected
    # Byte for byte as orjson writes each whole event (a line of several
    # values is written around its value, not one dict per value).
    assert decode_bytes(data)[1] == [orjson.dumps(event) for event in expected]
