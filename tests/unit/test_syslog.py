"""syslog.parse: syslog datagrams in, the message bytes and the header's facts out.

Captured samples, the real emitters (Python's SysLogHandler and util-linux
``logger`` writing to a unix socket the test binds), generated RFC 5424 /
RFC 3164 / bare datagrams that must round-trip, and arbitrary bytes that may
only ever raise SyslogError.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import re
import time
from collections.abc import Callable
from datetime import datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.receive.syslog import (
    FACILITIES,
    REJECT_REASONS,
    SEVERITIES,
    Syslog,
    SyslogError,
    looks_like_syslog,
    parse,
    wrap_text,
)
from ingest.vocabulary import Reject

FACT_NAMES = ("severity", "facility", "timestamp", "host", "app", "pid")
USER_WARNING = (("severity", "warning"), ("facility", "user"))  # <12>
USER_NOTICE = (("severity", "notice"), ("facility", "user"))  # <13>
BOM = b"\xef\xbb\xbf"
BODY = b'{"k":1}'


# ------------------------------------------------------- captured samples
@pytest.mark.parametrize(
    ("data", "body", "facts"),
    [
        # Python's SysLogHandler: PRI, message, NUL; ident prepended as is.
        (b'<12>{"k":1}\x00', BODY, USER_WARNING),
        (b'<12>myapp: {"k":1}\x00', BODY, (*USER_WARNING, ("app", "myapp"))),
        (b'<12>myapp[42]: {"k":1}\x00', BODY, (*USER_WARNING, ("app", "myapp"), ("pid", "42"))),
        (b'<12>{"k":1}', BODY, USER_WARNING),  # append_nul=False
        # logger on a unix socket: RFC 3164 without a hostname.
        (
            b'<13>Nov 28 03:24:03 app: {"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03"), ("app", "app")),
        ),
        (
            b'<13>Nov 28 03:24:03 app[1234]: {"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03"), ("app", "app"), ("pid", "1234")),
        ),
        # logger --rfc3164: a hostname; a space-padded day.
        (
            b'<13>Nov 28 03:24:03 host app[1234]: {"k":1}',
            BODY,
            (
                *USER_NOTICE,
                ("timestamp", "Nov 28 03:24:03"),
                ("host", "host"),
                ("app", "app"),
                ("pid", "1234"),
            ),
        ),
        (
            b'<13>Nov  3 03:24:03 host app: {"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov  3 03:24:03"), ("host", "host"), ("app", "app")),
        ),
        (
            b'<13>Nov  3 03:24:03 fe80::1 app: {"k":1}',  # an IPv6 hostname is not a tag
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov  3 03:24:03"), ("host", "fe80::1"), ("app", "app")),
        ),
        # logger --rfc5424
        (
            b"<13>1 2026-11-28T03:24:03.976791+00:00 vm app - - "
            b'[timeQuality tzKnown="1" isSynced="0"] {"k":1}',
            BODY,
            (
                *USER_NOTICE,
                ("timestamp", "2026-11-28T03:24:03.976791+00:00"),
                ("host", "vm"),
                ("app", "app"),
            ),
        ),
        # RFC 5424's own example 1 header, with PROCID, MSGID, two SD elements and a BOM.
        (
            b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 1234 ID47 "
            b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
            b'[examplePriority@32473 class="high"] \xef\xbb\xbf{"k":1}',
            BODY,
            (
                ("severity", "notice"),
                ("facility", "local4"),
                ("timestamp", "2003-10-11T22:14:15.003Z"),
                ("host", "mymachine.example.com"),
                ("app", "evntslog"),
                ("pid", "1234"),
            ),
        ),
        # NILVALUEs are absent facts; an empty MSG is an empty body.
        (b'<13>1 - - - - - - {"k":1}', BODY, USER_NOTICE),
        (b"<13>1 - - - - - -", b"", USER_NOTICE),
        (b"<13>1 - - - - - [a]", b"", USER_NOTICE),
        (b"<13>1 - - app - - -\n", b"", (*USER_NOTICE, ("app", "app"))),
        # Escapes in SD values: \] \" \\ (a value ending in an escaped backslash).
        (
            b'<13>1 - - - - - [x@1 a="\\]" b="say \\"hi\\"" c="\\\\"][y d=""] {"k":1}',
            BODY,
            USER_NOTICE,
        ),
        (b'<13>1 - - - - - [x a="]"] {"k":1}', BODY, USER_NOTICE),  # unescaped ] tolerated
        (b'<13>1 - - - - - [x a="\xc3\xa9\n"] {"k":1}', BODY, USER_NOTICE),  # UTF-8, newline
        # RFC3339Nano (9 fraction digits) and Z.
        (
            b'<13>1 2026-11-28T03:24:03.123456789Z - - - - - {"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "2026-11-28T03:24:03.123456789Z")),
        ),
        # The CEE cookie, with and without a space, in every layout.
        (b'<12>@cee: {"k":1}\x00', BODY, USER_WARNING),
        (b'<12>@cee:{"k":1}\x00', BODY, USER_WARNING),
        (b'<12>myapp: @cee:  {"k":1}\x00', BODY, (*USER_WARNING, ("app", "myapp"))),
        (
            b'<13>Nov 28 03:24:03 host app: @cee:{"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03"), ("host", "host"), ("app", "app")),
        ),
        (
            b'<13>Nov 28 03:24:03 @cee: {"k":1}',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03")),
        ),
        (b'<13>1 - - - - - - @cee: {"k":1}', BODY, USER_NOTICE),
        (b'<13>1 - - - - - - \xef\xbb\xbf@cee:{"k":1}', BODY, USER_NOTICE),
        # Trailing NUL and/or newline, in either order.
        (b'<12>{"k":1}\n', BODY, USER_WARNING),
        (b'<12>{"k":1}\x00\n', BODY, USER_WARNING),
        (b'<12>{"k":1}\n\x00', BODY, USER_WARNING),
        (b'<13>1 - - - - - - {"k":1}\x00\n', BODY, USER_NOTICE),
        (
            b'<13>Nov 28 03:24:03 app: {"k":1}\n',
            BODY,
            (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03"), ("app", "app")),
        ),
        # Text messages (for --syslog-wrap-text) keep everything after the header.
        (
            b"<38>Nov 28 03:24:03 vm sshd[77]: Accepted publickey for root",
            b"Accepted publickey for root",
            (
                ("severity", "info"),
                ("facility", "auth"),
                ("timestamp", "Nov 28 03:24:03"),
                ("host", "vm"),
                ("app", "sshd"),
                ("pid", "77"),
            ),
        ),
        (b"<12>just text\x00", b"just text", USER_WARNING),
        (b"<0>", b"", (("severity", "emerg"), ("facility", "kern"))),
        (b"<191>x", b"x", (("severity", "debug"), ("facility", "local7"))),
    ],
)
def test_captured_sample(data: bytes, body: bytes, facts: tuple[tuple[str, str], ...]) -> None:
    assert parse(data) == Syslog(body, facts)
    assert looks_like_syslog(data)


@pytest.mark.parametrize(
    "data",
    [
        b'<13>Nov 28 03:24:03 {"k":1}',  # no tag, no hostname
        b'<13>Nov 28 03:24:03 {"a b: c": 1}',  # a JSON text never reads as "HOST TAG"
        b'<13>Nov 28 03:24:03 ["a b: c"]',
        b'<13>Nov 28 03:24:03 "a b: c"',
        b'<13>Nov 28 03:24:03  {"k":1}',
    ],
)
def test_a_message_without_tag_is_kept_whole(data: bytes) -> None:
    assert parse(data) == Syslog(data[20:], (*USER_NOTICE, ("timestamp", "Nov 28 03:24:03")))


def test_a_tag_with_a_space_reads_as_hostname_and_tag() -> None:
    """``logger -t "my app"`` sends this; RFC 3164 cannot tell it from a
    hostname "my" and a tag "app", and neither can we."""
    assert parse(b"<13>Nov 28 03:24:03 my app: x").facts[-2:] == (("host", "my"), ("app", "app"))


def test_an_ident_that_is_not_a_tag_stays_in_the_message() -> None:
    """SysLogHandler(ident="myapp") (no ": ") glues the ident to the message."""
    assert parse(b'<12>myapp{"k":1}\x00') == Syslog(b'myapp{"k":1}', USER_WARNING)


# --------------------------------------------------------------- rejects
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'{"k":1}',
        b"<",
        b"<>",
        b"<>x",
        b"<12",
        b"12>x",
        b"<192>x",
        b"<999>x",
        b"<1000>x",
        b"<00>x",
        b"<013>x",
        b"<-1>x",
        b"<+1>x",
        b"< 1>x",
        b"<1 >x",
        b"<1a>x",
        b"<1_0>x",
        b"<\xd9\xa1>x",  # an Arabic-Indic digit
        b" <13>x",
        BOM + b"<13>x",
    ],
)
def test_bad_pri_is_invalid_syslog(data: bytes) -> None:
    with pytest.raises(SyslogError) as caught:
        parse(data)
    assert caught.value.reason == Reject.INVALID_SYSLOG
    assert "PRI" in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b"<13>1 ",
        b"<13>1 - - - - -",  # no STRUCTURED-DATA
        b"<13>1 - - - - - ",
        b"<13>1 - - - -",
        b"<13>1 -  vm app - - -",  # an empty field
        b"<13>1 2026-11-28 vm app - - -",  # not RFC 3339
        b"<13>1 2026-11-28t03:24:03Z vm app - - -",  # lower-case t
        b"<13>1 2026-11-28T03:24:03 vm app - - -",  # no zone
        b"<13>1 2026-11-28T03:24:03.1234567890Z vm app - - -",  # 10 fraction digits
        b"<13>1 - v\xc3\xa9 app - - -",  # not ASCII
        b"<13>1 - vm\x01 app - - -",  # a control byte
        b"<13>1 - - - - - -x",  # SD not followed by a space
        b'<13>1 - - - - - [x a="b"]x',
        b'<13>1 - - - - - [x a="b"',  # unclosed
        b'<13>1 - - - - - [x a="b\\"]',  # the closing quote is escaped
        b"<13>1 - - - - - [x a=b]",  # unquoted
        b"<13>1 - - - - - []",  # no SD-ID
        b"<13>1 - - - - - [x ]",
        b'<13>1 - - - - - [x a="b" ]',
        b"<13>1 - - - - - x",
        b"<12>1 apple",  # a bare message starting "1 " claims RFC 5424
    ],
)
def test_malformed_rfc5424_header_is_invalid_syslog(data: bytes) -> None:
    with pytest.raises(SyslogError) as caught:
        parse(data)
    assert caught.value.reason == Reject.INVALID_SYSLOG
    assert "RFC 5424" in str(caught.value)


def test_reasons_are_a_fixed_vocabulary() -> None:
    assert REJECT_REASONS == (Reject.INVALID_SYSLOG,) == ("invalid_syslog",)


def test_a_space_between_sd_elements_starts_the_message() -> None:
    """``[x] [y]``: the SD ends at the space, so ``[y]`` is the message."""
    assert parse(b"<13>1 - - - - - [x] [y]").body == b"[y]"


# ---------------------------------------------------------- PRI and facts
def test_every_pri_gives_the_keywords_python_uses() -> None:
    """The keywords are Python's SysLogHandler names for the same numbers."""
    names = logging.handlers.SysLogHandler
    for pri in range(192):
        facts = dict(parse(b"<%d>{}" % pri).facts)
        assert names.priority_names[facts["severity"]] == pri & 7
        assert names.facility_names[facts["facility"]] == pri >> 3
    assert len(set(SEVERITIES)) == 8
    assert len(set(FACILITIES)) == 24


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<0>", True),
        (b"<13>x", True),
        (b"<191>{}", True),
        (b"<999>x", True),  # recognised, then rejected by parse
        (b"<013>x", True),
        (b"", False),
        (b"<", False),
        (b"<>", False),
        (b"<1234>x", False),
        (b"<a>", False),
        (b"<1a>", False),
        (b"13>", False),
        (b"<13", False),
        (b'{"k":1}', False),
        (b'[{"k":1}]', False),
    ],
)
def test_looks_like_syslog(data: bytes, expected: bool) -> None:
    assert looks_like_syslog(data) is expected


# -------------------------------------------------------------- wrap_text
def test_wrap_text_shape() -> None:
    assert wrap_text(b"disk full") == b'{"message":"disk full"}'
    assert wrap_text(b"") == b'{"message":""}'
    assert wrap_text(b'a "quoted"\tline\\') == b'{"message":"a \\"quoted\\"\\tline\\\\"}'
    assert wrap_text("héllo ✓".encode()) == '{"message":"héllo ✓"}'.encode()


def test_wrap_text_replaces_invalid_utf8() -> None:
    assert orjson.loads(wrap_text(b"a\xffb\xc3")) == {"message": "a\ufffdb\ufffd"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_wrap_text_is_always_a_json_object_of_the_text(body: bytes) -> None:
    assert orjson.loads(wrap_text(body)) == {"message": body.decode("utf-8", "replace")}


# ------------------------------------------------------- the real emitters


def rfc3164_stamps(before: float, after: float) -> set[str]:
    """Every RFC 3164 timestamp (local time, space-padded day) in the interval."""
    return {
        time.strftime("%b %e %H:%M:%S", time.localtime(t))
        for t in range(int(before) - 1, int(after) + 2)
    }


def assert_rfc5424_stamp(stamp: str, before: float, after: float) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", stamp)
    sent = datetime.fromisoformat(stamp).timestamp()
    assert before - 1 <= sent <= after + 1


# --------------------------------------------------------- property tests
_FRAGMENTS = [
    b"<13>", b"<0>", b"<191>", b"<192>", b"1 ", b"-", b" ", b"[", b"]", b'"', b"\\", b"=",
    b"x", b"id", b'a="v"', b"Nov 28 03:24:03 ", b"Nov  3 03:24:03", b"app:", b"app[12]: ",
    b"host ", b"@cee:", BOM, b"\x00", b"\n", b"{", b"}", b"2026-11-28T03:24:03Z", b"\xff",
]  # fmt: skip
fuzz = st.tuples(
    st.sampled_from([b"", b"<13>", b"<13>1 ", b"<13>1 - - - - - "]),
    st.lists(st.sampled_from(_FRAGMENTS) | st.binary(max_size=4), max_size=30).map(b"".join),
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | fuzz)
def test_arbitrary_bytes_only_ever_raise_syslog_error(data: bytes) -> None:
    try:
        got = parse(data)
    except SyslogError as exc:
        assert exc.reason in REJECT_REASONS
        return
    assert looks_like_syslog(data)
    assert got.body in data  # always a slice of what was sent
    names = [name for name, _ in got.facts]
    assert names[:2] == ["severity", "facility"]
    assert names == sorted(set(names), key=FACT_NAMES.index)
    assert all(value and value.isascii() and value.isprintable() for _, value in got.facts)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
json_bodies = st.builds(
    orjson.dumps,
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    option=st.sampled_from([0, orjson.OPT_INDENT_2, orjson.OPT_SORT_KEYS]),
)
trailers = st.sampled_from([b"", b"\n", b"\x00", b"\x00\n", b"\n\x00"])
cookies = st.sampled_from([b"", b"@cee:", b"@cee: ", b"@cee:   "])
Facts = list[tuple[str, str]]
# A generated datagram, the body and the facts it must parse to.
Case = tuple[bytes, bytes, Facts]


def printable(excluded: str, max_size: int) -> st.SearchStrategy[str]:
    """1..max_size characters of printable ASCII but ``excluded``."""
    chars = "".join(chr(c) for c in range(33, 127) if chr(c) not in excluded)
    return st.text(chars, min_size=1, max_size=max_size)


def draw_pri(draw: st.DrawFn) -> tuple[bytes, Facts]:
    pri = draw(st.integers(0, 191))
    return b"<%d>" % pri, [("severity", SEVERITIES[pri & 7]), ("facility", FACILITIES[pri >> 3])]


def draw_message(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A JSON body, and the bytes that carry it: cookie, body, trailer."""
    body = draw(json_bodies)
    return draw(cookies) + body + draw(trailers), body


# RFC 5424 header fields: printable ASCII, "-" alone meaning absent.
fields = st.none() | printable("", 20).filter(lambda s: s != "-")
sd_names = printable(' ="]', 12)
sd_values = st.text(max_size=12).map(
    lambda v: v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
)
sd_params = st.lists(st.tuples(sd_names, sd_values), max_size=3).map(
    lambda params: "".join(f' {name}="{value}"' for name, value in params)
)
sd_elements = st.builds(lambda sd_id, params: f"[{sd_id}{params}]", sd_names, sd_params)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    year, month, day = (
        draw(st.integers(0, 9999)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 31)),
    )
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 60)),
    )
    frac = draw(st.sampled_from(["", ".1", ".003", ".976791", ".123456789"]))
    zone = draw(st.sampled_from(["Z", "+00:00", "-05:30", "+14:00"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{frac}{zone}"


@st.composite
def rfc5424_datagrams(draw: st.DrawFn) -> Case:
    pri, facts = draw_pri(draw)
    header = {"timestamp": draw(st.none() | rfc3339())}
    header |= {name: draw(fields) for name in ("host", "app", "pid", "msgid")}
    sd = "".join(draw(st.lists(sd_elements, max_size=3))) or "-"
    bom = draw(st.sampled_from([b"", BOM]))
    message, body = draw_message(draw)
    text = " ".join(value or "-" for value in header.values())
    data = pri + f"1 {text} {sd} ".encode() + bom + message
    facts += [(k, v) for k, v in header.items() if v is not None and k != "msgid"]
    return data, body, facts


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# A hostname: printable ASCII but []{}" (IPv6 colons included); one ending
# in ":" would be a tag, as documented.
hosts = printable('[]{}"', 20).filter(lambda h: not h.endswith(":"))
tag_names = printable(':[]{}"', 20).filter(lambda n: n != "@cee")
pids = printable("]", 8)


def draw_tag(draw: st.DrawFn) -> tuple[bytes, Facts]:
    """``app: `` or ``app[pid]: `` and its facts."""
    app, pid = draw(tag_names), draw(st.none() | pids)
    if pid is None:
        return f"{app}: ".encode(), [("app", app)]
    return f"{app}[{pid}]: ".encode(), [("app", app), ("pid", pid)]


@st.composite
def rfc3164_datagrams(draw: st.DrawFn) -> Case:
    pri, facts = draw_pri(draw)
    month, day = draw(st.sampled_from(MONTHS)), draw(st.integers(1, 31))
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    timestamp = f"{month} {day:2d} {hour:02d}:{minute:02d}:{second:02d}"
    facts.append(("timestamp", timestamp))
    host = draw(st.none() | hosts)
    if host is not None:
        facts.append(("host", host))
    tag, tag_facts = draw_tag(draw)
    message, body = draw_message(draw)
    host_part = f"{host} " if host is not None else ""
    data = pri + f"{timestamp} {host_part}".encode() + tag + message
    return data, body, facts + tag_facts


@st.composite
def bare_datagrams(draw: st.DrawFn) -> Case:
    """What SysLogHandler sends: PRI, the ident if it is a tag, message, NUL."""
    pri, facts = draw_pri(draw)
    tag, tag_facts = draw_tag(draw) if draw(st.booleans()) else (b"", [])
    message, body = draw_message(draw)
    return pri + tag + message, body, facts + tag_facts


@pytest.mark.parametrize(
    "datagrams", [rfc5424_datagrams, rfc3164_datagrams, bare_datagrams], ids=lambda f: f.__name__
)
def test_generated_datagrams_round_trip(datagrams: Callable[[], st.SearchStrategy[Case]]) -> None:
    """RFC 5424, RFC 3164 and the bare form: the body byte for byte, the facts as generated."""

    @settings(max_examples=200, deadline=None)
    @given(datagrams())
    def round_trips(case: Case) -> None:
        data, body, facts = case
        assert parse(data) == Syslog(body, tuple(facts))

    round_trips()


@settings(max_examples=200, deadline=None)
@given(json_bodies)
def test_a_json_datagram_never_looks_like_syslog(body: bytes) -> None:
    assert not looks_like_syslog(body)


# ------------------------------------------------------------ linear time
@pytest.mark.parametrize(
    "data",
    [
        b'<13>1 - - - - - [a b="' + b'\\"' * 500_000,  # unterminated, all escapes
        b'<13>1 - - - - - [a b="' + b"\\" * 1_000_000,
        b"<13>1 - - - - - [a" + b' b="x"' * 160_000,  # unclosed element
        b'<13>1 - - - - - [a b="x"]' * 100_000 + b"[",
        b"<13>Nov 28 03:24:03 " + b"a" * 1_000_000,
        b"<13>Nov 28 03:24:03 " + b"a" * 500_000 + b" " + b"b" * 500_000,
        b"<13>Nov 28 03:24:03 a[" + b"1" * 1_000_000,
        b"<13>" + b"a[1]" * 250_000,
        b"<13>1 " + b"a " * 500_000,
        b"<1>" + b"\x00\n" * 250_000 + b"x" + b"\x00\n" * 250_000,
        b"<13>@cee:" + b" " * 1_000_000,
    ],
)
def test_pathological_megabyte_parses_quickly(data: bytes) -> None:
    """Quadratic or exponential matching would take minutes on a megabyte."""
    started = time.perf_counter()
    with contextlib.suppress(SyslogError):
        parse(data)
    assert time.perf_counter() - started < 1.0
