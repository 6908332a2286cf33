"""Pub/Sub-native messages: attributes on every message, hand-encoded.

Without attributes configured, an event travels the pipeline as its own
bytes and the publisher wraps each in a PubsubMessage holding only ``data``
(pubsub.RequestEncoder): the plain path, untouched. With attributes, the
reader builds each event's PubsubMessage *body* once, as it decodes it
(``MessageBuilder.build``): the event's bytes as ``data``, byte for byte, then
the attributes. From there the body is what the queue bounds, the batcher
counts against the request's byte bound (attributes included), the spool
keeps (so attributes survive a restart), and ``MessageRequestEncoder`` frames.

Protobuf wire format (google/pubsub/v1/pubsub.proto)::

    PubsubMessage  data = 1 (bytes) | attributes = 2 (map<string, string>)
    map entry      key = 1 | value = 2
    PublishRequest topic = 1 | messages = 2

Pub/Sub's limits on attribute keys, their count and the reserved prefix are
checked once, in the configuration (config.py); what only an event can break,
a value too long or not a scalar, skips that attribute and is counted in
``ingest_attributes_skipped_total{reason}``. The event is always published.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

from orjson import dumps

from ingest.config import PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES
from ingest.pubsub import encode_topic_field, varint

# ingest_attributes_skipped_total reasons: an event's field cannot be an attribute.
VALUE_TOO_LONG = "value_too_long"  # over PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES
NOT_SCALAR = "not_scalar"  # an object or an array
SKIP_REASONS = (VALUE_TOO_LONG, NOT_SCALAR)

# What a spool segment holds (spoolfmt): events as received, or bodies.
KIND_DATA = 0
KIND_MESSAGES = 1


def encode_attribute(key: bytes, value: bytes) -> bytes:
    """One attributes map entry, framed as PubsubMessage field 2."""
    entry = b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value
    return b"\x12" + varint(len(entry)) + entry


def encode_data(data: bytes) -> bytes:
    """PubsubMessage.data (field 1): every body starts with it."""
    return b"\x0a" + varint(len(data)) + data


def data_of(body: bytes) -> bytes:
    """The event inside a body built here (its first field, ``data``)."""
    size = 0
    shift = 0
    pos = 1  # past the 0x0a tag
    while True:
        byte = body[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            return body[pos : pos + size]
        shift += 7


class MessageBuilder:
    """Builds the PubsubMessage body of one decoded event.

    ``static``: (key, value) pairs set on every message. ``fields``: (key,
    dotted path) pairs, each read from the event: a string as it is, a number
    or a boolean as its JSON text, absent or null: no attribute. Keys and
    their count were checked by the configuration.
    """

    def __init__(
        self,
        static: Sequence[tuple[str, str]],
        fields: Sequence[tuple[str, str]],
        skipped: MutableMapping[str, int],
    ) -> None:
        self._static = b"".join(encode_attribute(k.encode(), v.encode()) for k, v in static)
        self._fields = tuple((key.encode(), tuple(path.split("."))) for key, path in fields)
        self._skipped = skipped

    def build(self, data: bytes, event: dict[str, object]) -> bytes:
        parts = [encode_data(data), self._static]
        for key, path in self._fields:
            value: object = event
            for name in path:
                value = value.get(name) if type(value) is dict else None
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                raw = value.encode()  # type: ignore[attr-defined]
            elif kind is dict or kind is list:
                self._skipped[NOT_SCALAR] += 1
                continue
            else:  # int, float, bool: their JSON text
                raw = dumps(value)
            if len(raw) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES:
                self._skipped[VALUE_TOO_LONG] += 1
                continue
            parts.append(encode_attribute(key, raw))
        return b"".join(parts)

    def adopt(self, kind: int, events: list[bytes]) -> list[bytes]:
        """Spooled events, as this builder's pipeline carries them: events an
        earlier run spooled as plain data get their attributes now (they
        were valid JSON objects when accepted); bodies are kept as they are."""
        if kind == KIND_MESSAGES:
            return events
        from orjson import loads

        return [self.build(event, loads(event)) for event in events]


def plain(kind: int, events: list[bytes]) -> list[bytes]:
    """Spooled events for the plain pipeline: bodies give back their data
    (the attributes an earlier configuration added are not published)."""
    if kind == KIND_DATA:
        return events
    return [data_of(body) for body in events]


class MessageRequestEncoder:
    """PublishRequests of prebuilt bodies for one topic (the plain path's
    pubsub.RequestEncoder wraps raw events instead)."""

    def __init__(self, topic_path: str) -> None:
        self.topic_field = encode_topic_field(topic_path)
        self._headers: dict[int, bytes] = {}

    def encode(self, bodies: list[bytes]) -> bytes:
        headers = self._headers
        parts = [self.topic_field]
        append = parts.append
        for body in bodies:
            size = len(body)
            header = headers.get(size)
            if header is None:
                header = headers[size] = b"\x12" + varint(size)
            append(header)
            append(body)
        return b"".join(parts)
