"""The hand-encoded PublishRequest, checked against protobuf itself."""

from __future__ import annotations

import random

import pytest
from google.pubsub_v1.types import pubsub as pubsub_types
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pipeline.batch import MESSAGE_OVERHEAD_BYTES
from ingest.publish.pubsub import (
    Body,
    BodyEncoder,
    RequestEncoder,
    body_of,
    encode_attribute,
    encode_data,
    encode_topic_field,
)

PublishRequest = pubsub_types.PublishRequest.pb()
PubsubMessage = pubsub_types.PubsubMessage.pb()


def reference(topic: str, messages: list[bytes]) -> bytes:
    request = PublishRequest(topic=topic, messages=[PubsubMessage(data=m) for m in messages])
    return bytes(request.SerializeToString(deterministic=True))


def parse(request: bytes) -> tuple[str, list[bytes]]:
    parsed = PublishRequest.FromString(request)
    for message in parsed.messages:  # nothing but data was encoded
        assert not message.attributes and not message.ordering_key
    return parsed.topic, [m.data for m in parsed.messages]


topics = st.text(min_size=1, max_size=300).map(lambda t: f"projects/p/topics/{t}")
# Any bytes: an event may start with 0x0a (data's tag) and still be an event,
# since a whole body is told apart by its type, Body
# (test_bodies_are_framed_as_they_are).
events = st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(topics, st.lists(events, max_size=40))
def test_encoding_parses_back_to_the_same_request(topic: str, messages: list[bytes]) -> None:
    encoder = RequestEncoder(topic)
    assert parse(encoder.encode(messages)) == (topic, messages)
    # The header cache must not leak between calls or lengths.
    assert parse(encoder.encode(messages[::-1])) == (topic, messages[::-1])


@settings(max_examples=300, deadline=None)
@given(topics, st.lists(events.filter(bool), max_size=40))
def test_byte_identical_to_protobuf_when_no_message_is_empty(
    topic: str, messages: list[bytes]
) -> None:
    assert RequestEncoder(topic).encode(messages) == reference(topic, messages)


def test_an_empty_message_is_still_sent_as_a_message() -> None:
    """Protobuf omits an empty data field; we send it as ``0a 00``. Both decode
    to an empty message, which Pub/Sub rejects (that is what bisecting is for)."""
    topic = "projects/p/topics/t"
    request = RequestEncoder(topic).encode([b"a", b"", b"b"])
    assert parse(request) == (topic, [b"a", b"", b"b"])
    assert len(request) == len(reference(topic, [b"a", b"", b"b"])) + 2


def test_no_messages_is_just_the_topic() -> None:
    topic = "projects/p/topics/t"
    assert RequestEncoder(topic).encode([]) == reference(topic, []) == encode_topic_field(topic)


# Message sizes where a length varint grows a byte: the data length itself, and
# the enclosing PubsubMessage length (data + 1 tag byte + the data length's varint).
VARINT_EDGES = [
    1,
    125,
    126,
    127,
    128,
    129,
    16_380,
    16_381,
    16_382,
    16_383,
    16_384,
    16_385,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    (1 << 21) - 5,
    (1 << 21) - 4,
]


@pytest.mark.parametrize("size", VARINT_EDGES)
def test_sizes_near_varint_boundaries(size: int) -> None:
    topic = "projects/p/topics/t"
    messages = [bytes([size % 251]) * size, b"x"]
    request = RequestEncoder(topic).encode(messages)
    assert request == reference(topic, messages)
    assert parse(request) == (topic, messages)


@pytest.mark.parametrize("size", [s for s in VARINT_EDGES if s < (1 << 21) - 4])
def test_framing_per_message_stays_within_the_batchers_overhead(size: int) -> None:
    """batch.py bounds a request's size with MESSAGE_OVERHEAD_BYTES per message;
    that holds for every message below 2 MiB (datagrams are capped at 1 MiB)."""
    encoder = RequestEncoder("projects/p/topics/t")
    framing = len(encoder.encode([b"\0" * size])) - len(encoder.topic_field) - size
    assert framing <= MESSAGE_OVERHEAD_BYTES


@pytest.mark.parametrize("length", [1, 126, 127, 128, 129, 16_383, 16_384, 20_000])
def test_topic_lengths_near_varint_boundaries(length: int) -> None:
    topic = ("projects/p/topics/" + "t" * length)[:length]
    assert RequestEncoder(topic).encode([b"m"]) == reference(topic, [b"m"])


def test_non_ascii_topic_is_utf8() -> None:
    topic = "projects/p/topics/évènements-😀"
    assert RequestEncoder(topic).encode([b"m"]) == reference(topic, [b"m"])


@settings(max_examples=200, deadline=None)
@given(
    topics,
    st.lists(
        st.tuples(
            st.binary(max_size=300),
            st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=3),
        ),
        max_size=20,
    ),
    st.lists(events.filter(bool), max_size=20),
    st.randoms(use_true_random=False),
)
def test_bodies_are_framed_as_they_are(
    topic: str,
    bodies: list[tuple[bytes, dict[str, str]]],
    plain: list[bytes],
    rng: random.Random,
) -> None:
    """A Body is a prebuilt PubsubMessage (data first, then attributes;
    receive/dialects.py): framed as it is, mixed in one request with raw
    events, which may start with any byte; a body's bytes alone, untyped,
    are an event like any other."""
    messages: list[bytes] = [
        body_of(data, b"".join(encode_attribute(k.encode(), v.encode()) for k, v in attrs.items()))
        for data, attrs in bodies
    ] + plain
    rng.shuffle(messages)
    parsed = PublishRequest.FromString(RequestEncoder(topic).encode(messages))
    assert parsed.topic == topic
    got = sorted((m.data, sorted(m.attributes.items())) for m in parsed.messages)
    expected = sorted(
        [(data, sorted(attrs.items())) for data, attrs in bodies] + [(p, []) for p in plain]
    )
    assert got == expected


def test_an_event_is_never_taken_for_a_body_whatever_its_first_byte() -> None:
    """JSON text may start with whitespace, a newline included (0x0a, the
    tag a body starts with): an event so made is still wrapped as data, and
    the very bytes of a body are a body only when typed as one."""
    topic = "projects/p/topics/t"
    event = b'\n{"a":1}'
    body = encode_data(b'{"b":2}') + encode_attribute(b"k", b"v")
    parsed = PublishRequest.FromString(RequestEncoder(topic).encode([event, body, Body(body)]))
    assert [(m.data, dict(m.attributes)) for m in parsed.messages] == [
        (event, {}),
        (body, {}),
        (b'{"b":2}', {"k": "v"}),
    ]


def test_the_body_encoder_frames_every_message_as_a_body() -> None:
    """The metadata path's messages are all bodies, untyped: the same
    request as the plain encoder makes of them typed."""
    topic = "projects/p/topics/t"
    bodies = [encode_data(b'{"n":%d}' % n) + encode_attribute(b"k", b"%d" % n) for n in range(3)]
    request = BodyEncoder(topic).encode(bodies)
    assert request == RequestEncoder(topic).encode([Body(b) for b in bodies])
    parsed = PublishRequest.FromString(request)
    assert [(m.data, dict(m.attributes)) for m in parsed.messages] == [
        (b'{"n":%d}' % n, {"k": str(n)}) for n in range(3)
    ]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 2047, 2048, 16383, 16384, 70_000])
def test_a_body_is_its_data_field_then_its_attributes(size: int) -> None:
    data = b"x" * size
    attributes = encode_attribute(b"k", b"v")
    made = body_of(data, attributes)
    assert type(made) is Body
    assert made == encode_data(data) + attributes
