"""Pub/Sub over grpc.aio: the channel, the wire encoding, and the three RPCs we use.

Publish requests are hand-encoded protobuf (``RequestEncoder``): encoding
1,000 events takes ~0.12 ms, against ~0.55 ms with protobuf's own message
objects and ~3.5 ms with proto-plus ones (docs/design.md, with the command).
Tests check the bytes against protobuf. PubsubMessage bodies are encoded here
too (``encode_data``, ``encode_attribute``, ``body_of``; message.MessageBuilder
and the dialects build them from these) and read back (``data_of``,
``ordering_key_of``), so the format has one module.

Protobuf wire format (google/pubsub/v1/pubsub.proto)::

    PubsubMessage  data = 1 (bytes) | attributes = 2 (map<string, string>)
                   | ordering_key = 5 (string)
    map entry      key = 1 | value = 2
    PublishRequest topic = 1 | messages = 2
"""

from __future__ import annotations

import logging
import os

import grpc
import grpc.aio
from google.pubsub_v1.types import pubsub as pubsub_types

log = logging.getLogger(__name__)

EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"
PUBSUB_SCOPES = ("https://www.googleapis.com/auth/pubsub",)
_PUBLISH = "/google.pubsub.v1.Publisher/Publish"
_GET_TOPIC = "/google.pubsub.v1.Publisher/GetTopic"
_CREATE_TOPIC = "/google.pubsub.v1.Publisher/CreateTopic"
_Topic = pubsub_types.Topic.pb()
_GetTopicRequest = pubsub_types.GetTopicRequest.pb()

# Keepalive notices a black-holed connection within ~40 s even with no call
# outstanding long enough for its deadline; the reconnect backoff cap keeps
# recovery after an outage within seconds (gRPC's default cap is 120 s).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
)

# --publish-compression: gRPC message compression of Publish requests, as
# Google's Java, Go and C++ publishers offer. Per call, so only Publish is
# compressed; the first name is the default. Pub/Sub bills the uncompressed
# bytes either way; what shrinks is the traffic on the link (docs/performance.md,
# the compression suite, has the measured sizes and CPU).
PUBLISH_COMPRESSIONS: dict[str, grpc.Compression] = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
}


def emulator_host() -> str | None:
    """The process-level protocol: PUBSUB_EMULATOR_HOST selects the emulator."""
    return os.environ.get(EMULATOR_ENV) or None


def create_channel(endpoint: str, emulator: str | None) -> grpc.aio.Channel:
    """An insecure channel to the emulator, or TLS with Application Default
    Credentials (token refresh included) to the real service.

    Raises google.auth.exceptions.DefaultCredentialsError when no credentials
    can be found.
    """
    if emulator:
        return grpc.aio.insecure_channel(emulator, options=CHANNEL_OPTIONS)
    from google.api_core import grpc_helpers_async

    channel: grpc.aio.Channel = grpc_helpers_async.create_channel(
        endpoint,
        scopes=PUBSUB_SCOPES,
        default_scopes=PUBSUB_SCOPES,
        default_host=endpoint.rpartition(":")[0],
        options=list(CHANNEL_OPTIONS),
    )
    return channel


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_attribute(key: bytes, value: bytes) -> bytes:
    """One attributes map entry, framed as PubsubMessage field 2."""
    entry = b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value
    return b"\x12" + varint(len(entry)) + entry


def encode_data(data: bytes) -> bytes:
    """PubsubMessage.data (field 1): every body starts with it."""
    return b"\x0a" + varint(len(data)) + data


def data_of(body: bytes) -> bytes:
    """The event inside a PubsubMessage body (its first field, ``data``)."""
    size, pos = _read_varint(body, 1)  # past the 0x0a tag
    return body[pos : pos + size]


def data_header(body: bytes) -> bytes:
    """The tag and length before a body's data."""
    _, pos = _read_varint(body, 1)
    return body[:pos]


def ordering_key_of(body: bytes) -> bytes:
    """The ordering key of a body as message.MessageBuilder builds it (field 5,
    after data and the attributes), or b"": for spooled bodies, off the hot path."""
    pos = 0
    end = len(body)
    while pos < end:
        tag = body[pos]
        size, pos = _read_varint(body, pos + 1)
        if tag == 0x2A:
            return body[pos : pos + size]
        pos += size
    return b""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _message_header(size: int) -> bytes:
    # PublishRequest.messages (field 2, LEN) wrapping PubsubMessage.data
    # (field 1, LEN) of ``size`` bytes.
    data_len = varint(size)
    return b"\x12" + varint(1 + len(data_len) + size) + b"\x0a" + data_len


def _body_header(size: int) -> bytes:
    # PublishRequest.messages (field 2, LEN) of a PubsubMessage of ``size`` bytes.
    return b"\x12" + varint(size)


def encode_topic_field(topic_path: str) -> bytes:
    """PublishRequest.topic (field 1): the part every request repeats."""
    raw = topic_path.encode()
    return b"\x0a" + varint(len(raw)) + raw


# Data's tag and length for every length below this, built once (~90 KB):
# varint() per event cost ~0.1 µs, a third of making a Body.
DATA_HEADERS_TABLED = 2048
_DATA_HEADERS = tuple(b"\x0a" + varint(size) for size in range(DATA_HEADERS_TABLED))


class Body(bytes):
    """A whole PubsubMessage body, built before the publisher, which frames it
    as it is: on the plain path a syslog event's, its facts as attributes
    (receive/dialects.py). Its type says what it is, never its bytes: an
    event may start with any byte. A ``bytes`` still, so the queue's and the
    batch's accounting (``len``) and the spool take it as any message. The
    metadata path's bodies (message.MessageBuilder) are plain ``bytes``:
    there every message is one (``BodyEncoder``)."""

    __slots__ = ()


def body_of(data: bytes, attributes: bytes = b"") -> Body:
    """The Body holding ``data`` and ``attributes`` (encoded entries): per
    syslog event on the plain path, where a Body costs a copy more than
    plain bytes; the header comes from a table, which pays for it."""
    size = len(data)
    header = _DATA_HEADERS[size] if size < DATA_HEADERS_TABLED else b"\x0a" + varint(size)
    return Body(b"".join((header, data, attributes)))


class BodyEncoder:
    """Encodes PublishRequests for one topic of PubsubMessage bodies, each
    framed as it is: the metadata path's, where every message is one
    (pipeline/lanes.py). Headers are cached by length."""

    def __init__(self, topic_path: str) -> None:
        self.topic_field = encode_topic_field(topic_path)
        self._body_headers: dict[int, bytes] = {}

    def encode(self, messages: list[bytes]) -> bytes:
        headers = self._body_headers
        parts = [self.topic_field]
        append = parts.append
        for message in messages:
            size = len(message)
            header = headers.get(size)
            if header is None:
                header = headers[size] = _body_header(size)
            append(header)
            append(message)
        return b"".join(parts)


class RequestEncoder(BodyEncoder):
    """Encodes PublishRequests for one topic of the plain path's messages:
    an event's bytes, wrapped here in a PubsubMessage holding only ``data``,
    or a ``Body``, framed as it is. Headers are cached by length."""

    def __init__(self, topic_path: str) -> None:
        super().__init__(topic_path)
        self._headers: dict[int, bytes] = {}

    def encode(self, messages: list[bytes]) -> bytes:
        headers = self._headers
        body_headers = self._body_headers
        parts = [self.topic_field]
        append = parts.append
        for message in messages:
            size = len(message)
            if type(message) is Body:
                header = body_headers.get(size)
                if header is None:
                    header = body_headers[size] = _body_header(size)
            else:
                header = headers.get(size)
                if header is None:
                    header = headers[size] = _message_header(size)
            append(header)
            append(message)
        return b"".join(parts)


class PubSubClient:
    """The RPCs ingest needs, on one channel. Raises grpc.aio.AioRpcError.

    ``compression`` (a PUBLISH_COMPRESSIONS name) applies to Publish alone.
    A server that cannot decode it answers UNIMPLEMENTED."""

    def __init__(
        self, channel: grpc.aio.Channel, topic_path: str, *, compression: str = "none"
    ) -> None:
        if compression not in PUBLISH_COMPRESSIONS:
            raise ValueError(f"unknown publish compression {compression!r}")
        self.channel = channel
        self.topic_path = topic_path
        # NoCompression is falsy to grpc.aio: no grpc-internal-encoding-request
        # metadata, so the default call is exactly one made without compression.
        self._compression = PUBLISH_COMPRESSIONS[compression]
        # Request bytes go out as they are; the response (message IDs) is not
        # decoded, since nothing reads it.
        self._publish = channel.unary_unary(_PUBLISH)
        self._get_topic = channel.unary_unary(
            _GET_TOPIC,
            request_serializer=_GetTopicRequest.SerializeToString,
            response_deserializer=_Topic.FromString,
        )
        self._create_topic = channel.unary_unary(
            _CREATE_TOPIC,
            request_serializer=_Topic.SerializeToString,
            response_deserializer=_Topic.FromString,
        )

    async def publish(self, request: bytes, timeout_s: float) -> None:
        await self._publish(request, timeout=timeout_s, compression=self._compression)

    async def get_topic(self, timeout_s: float) -> None:
        await self._get_topic(_GetTopicRequest(topic=self.topic_path), timeout=timeout_s)

    async def create_topic(self, timeout_s: float) -> None:
        await self._create_topic(_Topic(name=self.topic_path), timeout=timeout_s)

    async def close(self) -> None:
        await self.channel.close()
