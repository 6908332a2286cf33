"""Messages with attributes: the hand-encoded bodies and requests, checked
against protobuf itself, and the rules that turn event fields into attributes."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest
from google.pubsub_v1.types import pubsub as pubsub_types
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES, PUBSUB_MAX_ORDERING_KEY_BYTES
from ingest.pipeline import message
from ingest.pipeline.message import (
    COMBO_MAX_CHARS,
    COMBOS_CACHED,
    DATA_HEADERS_CACHED,
    MessageBuilder,
    Route,
    from_data_record,
    plain,
)
from ingest.publish.pubsub import (
    BodyEncoder,
    data_of,
    encode_attribute,
    encode_data,
    ordering_key_of,
)
from ingest.spool.records import KIND_DATA, KIND_MESSAGES
from ingest.vocabulary import Skip

PublishRequest = pubsub_types.PublishRequest.pb()
PubsubMessage = pubsub_types.PubsubMessage.pb()
TOPIC = "projects/p/topics/events"

keys = st.text(min_size=1, max_size=40).filter(lambda k: not k.startswith("goog"))
values = st.text(max_size=60)
field_names = keys.filter(lambda k: "." not in k)  # a dot separates a path's steps


def parsed(request: bytes) -> list[tuple[bytes, dict[str, str]]]:
    message_list = PublishRequest.FromString(request)
    assert message_list.topic == TOPIC
    return [(m.data, dict(m.attributes)) for m in message_list.messages]


def body(build: MessageBuilder, data: bytes, event: dict[str, object]) -> bytes:
    """The body ``build`` makes of one event (its lane aside)."""
    return build.build(data, event)[1]


def builder(
    static: list[tuple[str, str]] = (),  # type: ignore[assignment]
    fields: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> tuple[MessageBuilder, defaultdict[str, int]]:
    skipped: defaultdict[str, int] = defaultdict(int)
    return MessageBuilder(static, fields, skipped), skipped


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=20),
    st.dictionaries(keys, values, max_size=8),
)
def test_static_attributes_parse_back_to_protobufs_own_message(
    events: list[bytes], static: dict[str, str]
) -> None:
    build, _ = builder(sorted(static.items()))
    request = BodyEncoder(TOPIC).encode([body(build, e, {}) for e in events])
    reference = PublishRequest(
        topic=TOPIC, messages=[PubsubMessage(data=e, attributes=static) for e in events]
    )
    assert PublishRequest.FromString(request) == reference


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), keys, st.text(min_size=1, max_size=2000))
def test_one_attribute_is_byte_identical_to_protobuf(data: bytes, key: str, value: str) -> None:
    """Byte for byte where protobuf's own bytes are unique: with several map
    entries its deterministic order is its own, and it leaves an empty value
    out of its entry where we write it empty (the same message either way)."""
    build, _ = builder([(key, value)])
    reference = PublishRequest(
        topic=TOPIC, messages=[PubsubMessage(data=data, attributes={key: value})]
    )
    encoded = BodyEncoder(TOPIC).encode([body(build, data, {})])
    assert encoded == reference.SerializeToString(deterministic=True)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        field_names,
        st.one_of(
            values,
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.none(),
        ),
        max_size=8,
    ),
    st.dictionaries(keys, values, max_size=4),
)
def test_field_attributes_parse_back_as_protobuf_reads_them(
    event: dict[str, object], static: dict[str, str]
) -> None:
    fields = [(f"a-{key}", key) for key in event]
    build, skipped = builder(sorted(static.items()), fields)
    data = orjson.dumps(event)
    [(got_data, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, data, event)]))
    assert got_data == data  # byte for byte
    expected = dict(static)
    for key, value in event.items():
        if value is None:
            continue
        expected[f"a-{key}"] = value if isinstance(value, str) else orjson.dumps(value).decode()
    assert got == expected
    assert not skipped


@pytest.mark.parametrize(
    ("value", "attribute"),
    [
        ("signup", "signup"),
        ("héllo — 世界", "héllo — 世界"),
        ("", ""),
        (42, "42"),
        (-1.5, "-1.5"),
        (True, "true"),
        (False, "false"),
    ],
)
def test_scalars_become_strings(value: object, attribute: str) -> None:
    build, skipped = builder(fields=[("kind", "kind")])
    event = {"kind": value}
    [(_, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, orjson.dumps(event), event)]))
    assert got == {"kind": attribute}
    assert not skipped


def test_dotted_paths_reach_into_nested_objects() -> None:
    build, _ = builder(fields=[("user", "user.id"), ("deep", "a.b.c"), ("miss", "user.name.x")])
    event = {"user": {"id": 7, "name": "ann"}, "a": {"b": {"c": "x"}}}
    [(_, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, orjson.dumps(event), event)]))
    assert got == {"user": "7", "deep": "x"}  # through a string: absent, not an error


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"an": "object"}, Skip.NOT_SCALAR),
        ([1, 2], Skip.NOT_SCALAR),
        ("x" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES + 1), Skip.VALUE_TOO_LONG),
        (
            "é" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES // 2 + 1),
            Skip.VALUE_TOO_LONG,
        ),  # bytes, not chars
    ],
)
def test_a_field_that_cannot_be_an_attribute_is_skipped_and_counted(
    value: object, reason: str
) -> None:
    """The event is still published, with its other attributes."""
    build, skipped = builder([("host", "web-1")], [("bad", "v"), ("ok", "ok")])
    event = {"v": value, "ok": "yes"}
    data = orjson.dumps(event)
    [(got_data, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, data, event)]))
    assert got_data == data
    assert got == {"host": "web-1", "ok": "yes"}
    assert dict(skipped) == {reason: 1}


def test_the_longest_value_is_kept() -> None:
    build, skipped = builder(fields=[("v", "v")])
    event = {"v": "x" * PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES}
    [(_, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, orjson.dumps(event), event)]))
    assert got == {"v": "x" * PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES}
    assert not skipped


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=70_000))
def test_data_of_gives_back_the_event(data: bytes) -> None:
    build, _ = builder([("k", "v")])
    assert data_of(body(build, data, {})) == data


def test_spooled_events_follow_the_pipeline_they_return_to() -> None:
    """Plain data spooled by an earlier run gets today's attributes; bodies
    spooled with attributes give back their data to a plain pipeline."""
    build, _ = builder([("host", "web-1")], [("kind", "kind")])
    event = b'{"kind":"signup"}'
    [(lane, made)] = build.adopt_data([event])
    assert lane == (0, b"")
    assert parsed(BodyEncoder(TOPIC).encode([made])) == [
        (event, {"host": "web-1", "kind": "signup"})
    ]
    assert plain(KIND_MESSAGES, [made]) == [event]
    assert plain(KIND_DATA, [event]) == [event]


ordering_keys = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.dictionaries(keys, values, max_size=4), ordering_keys)
def test_ordering_key_parses_back_and_is_the_lane(
    data: bytes, static: dict[str, str], key: str
) -> None:
    """PubsubMessage.ordering_key (field 5) as protobuf reads it, UTF-8
    included; an empty key is no key (Pub/Sub's own rule)."""
    build, skipped = builder(sorted(static.items()))
    build = MessageBuilder(sorted(static.items()), [], skipped, ordering_field="user.id")
    event: dict[str, object] = {"user": {"id": key}}
    lane, made = build.build(data, event)
    assert lane == (0, key.encode())
    [message] = PublishRequest.FromString(BodyEncoder(TOPIC).encode([made])).messages
    assert message.data == data
    assert message.ordering_key == key
    assert dict(message.attributes) == static
    assert ordering_key_of(made) == key.encode()
    assert data_of(made) == data


def test_one_ordering_key_is_byte_identical_to_protobuf() -> None:
    build = MessageBuilder([("k", "v")], [], defaultdict(int), ordering_field="o")
    _, made = build.build(b"{}", {"o": "user-7"})
    reference = PublishRequest(
        topic=TOPIC,
        messages=[PubsubMessage(data=b"{}", attributes={"k": "v"}, ordering_key="user-7")],
    )
    assert BodyEncoder(TOPIC).encode([made]) == reference.SerializeToString()


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (42, b"42", None),
        (True, b"true", None),
        (None, b"", None),
        ("", b"", None),
        ({"an": "object"}, b"", Skip.NOT_SCALAR),
        ("k" * PUBSUB_MAX_ORDERING_KEY_BYTES, b"k" * PUBSUB_MAX_ORDERING_KEY_BYTES, None),
        ("k" * (PUBSUB_MAX_ORDERING_KEY_BYTES + 1), b"", Skip.ORDERING_KEY_TOO_LONG),
    ],
)
def test_ordering_key_rules(value: object, key: bytes, reason: str | None) -> None:
    """The attribute rules; a key that cannot be one leaves the message
    unordered, published, and counted."""
    skipped: defaultdict[str, int] = defaultdict(int)
    build = MessageBuilder([], [], skipped, ordering_field="o")
    event = {"o": value}
    data = orjson.dumps(event)
    lane, made = build.build(data, event)
    assert lane == (0, key)
    assert ordering_key_of(made) == key
    assert data_of(made) == data
    assert dict(skipped) == ({reason: 1} if reason else {})


def test_routes_first_match_wins_by_the_attribute_rules() -> None:
    routes = [
        Route(1, "level", "error"),
        Route(2, "level", "error"),
        Route(2, "http.status", "500"),
    ]
    build = MessageBuilder([], [], defaultdict(int), routes=routes)
    cases = [
        ({"level": "error"}, 1),  # the first match wins, not the last
        ({"http": {"status": 500}}, 2),  # a number matches its JSON text
        ({"http": {"status": "500"}}, 2),
        ({"level": "warning"}, 0),  # no match: --topic
        ({"level": ["error"]}, 0),  # an array is not a scalar: no match
        ({}, 0),
    ]
    for event, topic in cases:
        lane, _ = build.build(orjson.dumps(event), event)
        assert lane == (topic, b""), event


def test_sender_attributes_belong_to_one_build_call() -> None:
    """The sender's entries come with the call (``extra``), so one builder
    serves every reader: a message built with them has them, the next one
    without does not, from the combination cache as from the slow path."""
    build = MessageBuilder([("host", "web-1")], [("kind", "kind")], defaultdict(int))
    sender = encode_attribute(b"sender_uid", b"1000")
    for _ in range(2):  # the second round hits the combination cache
        mine = build.build(b'{"kind":"a"}', {"kind": "a"}, sender)[1]
        other = build.build(b'{"kind":"a"}', {"kind": "a"})[1]
        [(_, with_sender), (_, without)] = parsed(BodyEncoder(TOPIC).encode([mine, other]))
        assert with_sender == {"host": "web-1", "kind": "a", "sender_uid": "1000"}
        assert without == {"host": "web-1", "kind": "a"}


def test_a_spooled_event_that_is_not_an_object_is_still_published_as_data() -> None:
    build = MessageBuilder([("host", "web-1")], [], defaultdict(int))
    adopted = build.adopt_data([b"[1]", b"\xff", b'{"ok":1}'])
    assert [data_of(made) for _, made in adopted] == [b"[1]", b"\xff", b'{"ok":1}']
    assert parsed(BodyEncoder(TOPIC).encode([made for _, made in adopted]))[2] == (
        b'{"ok":1}',
        {"host": "web-1"},
    )


def test_cached_encodings_keep_types_apart_and_count_every_skip() -> None:
    """Encodings are cached by value: true, 1 and 1.0 are equal in Python
    but not as text, and a skipped value is counted each time, not once."""
    skipped: defaultdict[str, int] = defaultdict(int)
    build = MessageBuilder([], [("v", "v")], skipped, ordering_field="o")
    for _ in range(2):
        for value, text in ((True, "true"), (1, "1"), (1.0, "1.0"), ("1", "1")):
            event = {"v": value, "o": value}
            [(_, got)] = parsed(BodyEncoder(TOPIC).encode([body(build, b"{}", event)]))
            assert got == {"v": text}
            assert build.build(b"{}", event)[0] == (0, text.encode())
        build.build(b"{}", {"v": [1], "o": "k" * (PUBSUB_MAX_ORDERING_KEY_BYTES + 1)})
    assert dict(skipped) == {Skip.NOT_SCALAR: 2, Skip.ORDERING_KEY_TOO_LONG: 2}


def test_negative_zero_is_not_read_as_zero() -> None:
    """-0.0 equals 0.0 (and hashes alike) but its JSON text differs: no
    cache may hand one the other's encoding."""
    for fields, ordering in (([("v", "v")], None), ([("v", "v"), ("w", "w.x")], "o")):
        build = MessageBuilder([], fields, defaultdict(int), ordering_field=ordering)
        for value, text in ((0.0, b"0.0"), (-0.0, b"-0.0"), (0.0, b"0.0"), (-0.0, b"-0.0")):
            event = {"v": value, "o": value}
            [(_, attributes)] = parsed(BodyEncoder(TOPIC).encode([body(build, b"{}", event)]))
            assert attributes == {"v": text.decode()}
            if ordering:
                assert build.build(b"{}", event)[0] == (0, text)


def test_a_spooled_body_of_the_plain_path_keeps_its_attributes_when_adopted() -> None:
    """A syslog event on the plain path is spooled as a body with its syslog
    attributes; a later run with metadata builds on its data and keeps them
    (the record's items typed as replay reads them)."""
    build = MessageBuilder([("host", "web-1")], [("kind", "kind")], defaultdict(int))
    spooled = encode_data(b'{"kind":"a"}') + encode_attribute(b"syslog_app", b"app")
    [(lane, made)] = build.adopt_data(from_data_record([spooled]))
    assert lane == (0, b"")
    assert parsed(BodyEncoder(TOPIC).encode([made])) == [
        (b'{"kind":"a"}', {"host": "web-1", "kind": "a", "syslog_app": "app"})
    ]


# Values a field may read: equal across types (1, 1.0, True), absent (None),
# too long for an attribute, not a scalar, and a long route value.
_mixed_values = st.sampled_from(
    [
        None,
        0,
        1,
        1.0,
        0.0,
        -0.0,
        True,
        False,
        "1",
        "true",
        "a",
        "",
        "x" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES + 1),
        "r" * 300,
        [1],
        {"a": 1},
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {}, optional={"a": _mixed_values, "b": _mixed_values, "o": _mixed_values}
        ),
        min_size=1,
        max_size=30,
    ),
    st.booleans(),
)
def test_the_combination_cache_builds_what_reading_each_field_builds(
    events: list[dict[str, object]], one_name: bool
) -> None:
    """build's cache of whole combinations (every path one name) gives each
    event the body, lane and skips that a builder which has seen no other
    event gives it: numbers of equal value and other types, absent fields,
    values too long or not scalar, whatever came before."""
    fields = [("a", "a")] if one_name else [("a", "a"), ("b", "b")]
    routes = [Route(1, "b", "1"), Route(2, "o", "r" * 300)]

    def make(skipped: defaultdict[str, int]) -> MessageBuilder:
        return MessageBuilder([("s", "t")], fields, skipped, ordering_field="o", routes=routes)

    warm_skipped: defaultdict[str, int] = defaultdict(int)
    warm = make(warm_skipped)
    cold_skipped: defaultdict[str, int] = defaultdict(int)
    for event in events * 2:
        data = orjson.dumps(event)
        assert warm.build(data, event) == make(cold_skipped).build(data, event)
    assert warm_skipped == cold_skipped


def test_the_combination_cache_is_bounded() -> None:
    """A new combination every third event (recurring ones between, so the
    cache keeps working): it is cleared when full, and strings too long to
    keep are never kept."""
    build = MessageBuilder([], [("a", "a")], defaultdict(int), routes=[Route(1, "r", "x")])
    for i in range(COMBOS_CACHED * 2 + 10):
        build.build(b"{}", {"a": f"v{i}", "r": "y" * (COMBO_MAX_CHARS + 1) if i % 2 else "y"})
        for _ in range(2):
            build.build(b"{}", {"a": "hot", "r": "y"})
    assert build._read is not None
    assert COMBO_MAX_CHARS * 4 <= PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES  # UTF-8: no skipped value kept
    assert COMBO_MAX_CHARS * 4 <= PUBSUB_MAX_ORDERING_KEY_BYTES
    assert 0 < len(build._combos) <= COMBOS_CACHED
    assert all(
        sum(len(v) for v in key if isinstance(v, str)) <= COMBO_MAX_CHARS for key in build._combos
    )


def test_data_headers_are_kept_for_short_events_only() -> None:
    """A sender chooses its events' lengths: one kept header per length, up
    to the 1 MiB ceiling, would be ~100 MiB."""
    build = MessageBuilder([("k", "v")], [], defaultdict(int))
    for size in range(DATA_HEADERS_CACHED - 100, DATA_HEADERS_CACHED + 2000):
        data = b'{"p":"' + b"x" * (size - 8) + b'"}'
        _, body = build.build(data, {})
        assert data_of(body) == data and body.startswith(encode_data(data))
    assert len(build._data_headers) == 100


def test_the_combination_cache_rests_while_values_do_not_recur(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A field new in every event (a request id): a round of misses with
    fewer hits sets the cache aside for a while, then it is tried again;
    bodies are the same throughout."""
    monkeypatch.setattr(message, "COMBOS_REST_EVENTS", 100)
    skipped: defaultdict[str, int] = defaultdict(int)
    build = MessageBuilder([], [("id", "id"), ("kind", "kind")], skipped)
    cold = MessageBuilder([], [("id", "id"), ("kind", "kind")], skipped)
    events = ({"id": f"req-{i}", "kind": "a"} for i in range(10**6))
    for _ in range(COMBOS_CACHED):
        event = next(events)
        assert build.build(b"{}", event) == cold.build(b"{}", event)
    assert build._read is None and not build._combos  # resting
    for _ in range(100):
        event = next(events)
        assert build.build(b"{}", event) == cold.build(b"{}", event)
    assert build._read is not None  # tried again
    recurring = {"id": "same", "kind": "a"}
    for _ in range(COMBOS_CACHED * 2):
        assert build.build(b"{}", recurring) == cold.build(b"{}", recurring)
    assert build._read is not None  # values that recur keep it
