"""Pub/Sub-native messages: attributes, ordering keys and routes, hand-encoded.

Without metadata configured, an event travels the pipeline as its own bytes
and the publisher wraps each in a PubsubMessage holding only ``data``
(pubsub.RequestEncoder): the plain path, untouched but for a syslog event,
which travels as a pubsub.Body with its facts (receive/dialects.py). With
metadata, the reader builds each event's PubsubMessage *body* once, as it
decodes it (``MessageBuilder.build``): the event's bytes as ``data``, byte
for byte, the attributes, the ordering key; and its *lane*, (topic number,
ordering key), which lanes.py batches by. From there the body is what the
queue bounds, the batcher counts against the request's byte bound
(attributes included), the spool keeps (so metadata survives a restart), and
pubsub.BodyEncoder frames as they are.

The wire format and its encoders are publish/pubsub.py's; the builder frames
with them, keeping the tags and lengths it repeats cached.

Pub/Sub's limits on attribute keys, their count and the reserved prefix are
checked once, in the configuration (config.py); what only an event can break,
a value too long or not a scalar, skips that attribute (or ordering key) and
is counted in ``ingest_attributes_skipped_total{reason}``. The event is
always published.
"""

from __future__ import annotations

import operator
from collections.abc import MutableMapping, Sequence

from orjson import JSONDecodeError, dumps, loads

from ingest.config import PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES, PUBSUB_MAX_ORDERING_KEY_BYTES
from ingest.publish.pubsub import (
    Body,
    body_of,
    data_header,
    data_of,
    encode_attribute,
    encode_data,
    varint,
)
from ingest.spool.records import KIND_DATA
from ingest.vocabulary import Skip

# ingest_attributes_skipped_total reasons: an event's field cannot be an attribute.
SKIP_REASONS = (Skip.VALUE_TOO_LONG, Skip.NOT_SCALAR, Skip.ORDERING_KEY_TOO_LONG)
ORDERING_SLOT = -1  # the ordering key's slot in MessageBuilder's cache (fields: 0, 1, ...)
PIECES_CACHED = 4096
# build's combinations of field values kept at once, and the characters of
# their strings: an entry (key, values, encoded metadata) stays under ~1.5 KiB,
# the cache under ~6 MiB. 256 characters are at most 1,024 bytes of UTF-8, so
# no value kept is one that Pub/Sub's limits skip.
COMBOS_CACHED = 4096
COMBO_MAX_CHARS = 256
COMBOS_REST_EVENTS = 1 << 18  # builds without the cache after a round of mostly misses
# Data headers are kept for lengths below this (~1.6 MiB of them at most):
# one per length a sender chooses would be ~100 MiB up to the datagram ceiling.
DATA_HEADERS_CACHED = 1 << 14

# Where a message goes: (topic number, ordering key). Messages of one lane
# share requests; a lane with a key has at most one request in flight.
Lane = tuple[int, bytes]


class Route:
    """``--route TOPIC:FIELD=VALUE``: events whose FIELD reads VALUE (by the
    attribute rules: a string as it is, a number or boolean as its JSON
    text) go to topic number ``topic`` (0 is --topic)."""

    __slots__ = ("path", "text", "topic", "value")

    def __init__(self, topic: int, path: str, value: str) -> None:
        self.topic = topic
        self.path = tuple(path.split("."))
        self.text = value
        self.value = value.encode()


def field_of(event: object, path: tuple[str, ...]) -> object:
    """The value at a dotted path, or None when a step is absent or not an object."""
    value: object = event
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def scalar_text(value: object) -> bytes | None:
    """A field's value as an attribute's text: a string as it is, a number
    or boolean as its JSON text; None for an object or an array."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return None
    return dumps(value)


class MessageBuilder:
    """Builds the PubsubMessage body of one decoded event, and its lane.

    ``static``: (key, value) pairs set on every message. ``fields``: (key,
    dotted path) pairs, each read from the event by ``scalar_text``'s rules;
    absent or null: no attribute. ``ordering_field``: the path the ordering
    key is read from, by the same rules. ``routes``: the first that matches
    names the topic. Keys and their count were checked by the configuration.

    What is the event's own and not the configuration's comes with each
    ``build``: its sender's attributes (the unix credentials, which the
    reader learns per datagram: receive/receivers.py) and syslog's facts,
    so every reader of a pipeline builds with the same builder.
    """

    def __init__(
        self,
        static: Sequence[tuple[str, str]],
        fields: Sequence[tuple[str, str]],
        skipped: MutableMapping[str, int],
        *,
        ordering_field: str | None = None,
        routes: Sequence[Route] = (),
    ) -> None:
        self._static = b"".join(encode_attribute(k.encode(), v.encode()) for k, v in static)
        self._keys = tuple(key.encode() for key, _ in fields)
        self._paths = tuple(tuple(path.split(".")) for _, path in fields)
        # Encoded pieces by (slot, type, value); bounded (cleared when full),
        # and values over the attribute limit are never kept: at most
        # PIECES_CACHED x ~3 KiB (value, text, piece).
        self._data_headers: dict[int, bytes] = {}  # data's tag and length, by length
        self._pieces: dict[tuple[int, type, object], tuple[bytes, bytes] | str] = {}
        # The same for str and int values that are not skipped, by slot and
        # value alone (build's fast path; _piece fills them): no key to build,
        # and a str never equals an int (bools and floats, which do equal
        # ints, are kept out by type). Per field: (slot, its path's first
        # name, the rest, its values).
        self._strings: dict[int, dict[object, tuple[bytes, bytes]]] = {}
        self._fields = tuple(
            (slot, path[0], path[1:], self._strings.setdefault(slot, {}))
            for slot, path in enumerate(self._paths)
        )
        self._ordering: tuple[str, tuple[str, ...], dict[object, tuple[bytes, bytes]]] | None = None
        if ordering_field:
            path = tuple(ordering_field.split("."))
            self._ordering = (path[0], path[1:], self._strings.setdefault(ORDERING_SLOT, {}))
        self._routes = tuple(routes)
        # build's combination cache: the names every path reads, when each
        # is one name (empty otherwise), read together by one itemgetter (a
        # third of the cost of one dict.get each); and by their values the
        # metadata they make: (attribute entries and ordering key, lane, the
        # position and type of each number among the values). Bounded:
        # cleared when full. It pays only when values recur: a field with a
        # new value in every event (a request id) makes build ~2 µs dearer
        # (tools/bench/lanes.py --unique), so when a round of COMBOS_CACHED
        # misses saw fewer hits, it rests for COMBOS_REST_EVENTS events.
        paths = [*self._paths, *(r.path for r in self._routes)]
        if ordering_field:
            paths.append(tuple(ordering_field.split(".")))
        self._names: tuple[str, ...] = ()
        if all(len(path) == 1 for path in paths):
            self._names = tuple(dict.fromkeys(path[0] for path in paths))
        self._reader = operator.itemgetter(*self._names) if self._names else None
        self._read = self._reader  # None while the cache rests
        self._one_name = len(self._names) == 1  # its itemgetter gives the value alone
        self._hits = self._misses = self._resting = 0
        self._combos: dict[
            tuple[object, ...], tuple[bytes, Lane, tuple[tuple[int, type], ...]]
        ] = {}
        self._skipped = skipped

    def build(
        self, data: bytes, event: dict[str, object], extra: bytes = b""
    ) -> tuple[Lane, bytes]:
        """``extra``: attribute entries of this event alone: its sender's
        (receive/wakeup.WakeUp.sender), then syslog's facts.

        Per event, the hot path of the metadata pipeline. When every path
        is one name (the usual configuration), the values they read, taken
        together, find the message's whole metadata -- its attribute
        entries, ordering key and lane -- in one lookup (``_combos``): a few
        fields with few values each recur in every event, and finding them
        costs ~0.4 µs an event less than reading and encoding them one by
        one (tools/bench/lanes.py). What is not found there takes
        ``_metadata``, and is kept for the next event."""
        size = len(data)
        header = self._data_headers.get(size)
        if header is None:
            header = b"\x0a" + varint(size)  # as encode_data
            if size < DATA_HEADERS_CACHED:
                self._data_headers[size] = header
        values: tuple[object, ...] | None = None
        if self._read is not None:
            try:
                read = self._read(event)
                if self._one_name:
                    read = (read,)
            except KeyError:  # a field absent from this event
                read = tuple(map(event.get, self._names))
            try:
                hit = self._combos.get(read)
                values = read
            except TypeError:  # an object or array among them: not a key
                hit = None
            if hit is not None:
                # 1, 1.0 and True are equal keys but read differently: an
                # entry's numbers are checked for their type.
                for index, kind in hit[2]:
                    if type(read[index]) is not kind:
                        break
                else:
                    self._hits += 1
                    body = (header, data, self._static, extra, hit[0])
                    return hit[1], b"".join(body)
            self._count_miss()
        elif self._resting:
            self._resting -= 1
            if not self._resting:
                self._read = self._reader
        suffix, lane = self._metadata(event)
        # Kept only when short, and so never with a value that was skipped:
        # a skip is counted per event, and only objects and arrays (no key),
        # or strings longer than COMBO_MAX_CHARS allows, are skipped.
        if values is not None and self._read is not None and _keepable(values):
            combos = self._combos
            if len(combos) >= COMBOS_CACHED:
                combos.clear()
            numbers = tuple(
                (index, type(value))
                for index, value in enumerate(values)
                if value is not None and type(value) is not str
            )
            combos[values] = (suffix, lane, numbers)
        return lane, b"".join((header, data, self._static, extra, suffix))

    def _count_miss(self) -> None:
        """A round of COMBOS_CACHED misses with fewer hits: values rarely
        recur, so reading them twice (the cache's way, then each field's)
        costs more than it saves; the cache rests."""
        self._misses += 1
        if self._misses >= COMBOS_CACHED:
            if self._hits < self._misses:
                self._read = None
                self._resting = COMBOS_REST_EVENTS
                self._combos.clear()
            self._hits = self._misses = 0

    def _metadata(self, event: dict[str, object]) -> tuple[bytes, Lane]:
        """An event's attribute entries read from its fields and its ordering
        key (as one piece of body), and its lane: fields are read with one ``dict.get`` when their path is one name, and
        a string's or an int's encoding is found in its slot's own cache
        without building a key; anything else takes ``_piece``'s general
        path."""
        parts = []
        for slot, name, rest, strings in self._fields:
            value = event.get(name)
            if rest and value is not None:
                value = field_of(value, rest)
            if value is None:
                continue
            kind = type(value)
            piece = strings.get(value) if kind is str or kind is int else None
            if piece is None:
                piece = self._piece(slot, value)
                if piece is None:
                    continue
            parts.append(piece[0])
        key = b""
        if self._ordering is not None:
            name, rest, strings = self._ordering
            value = event.get(name)
            if rest and value is not None:
                value = field_of(value, rest)
            if value is not None:
                kind = type(value)
                piece = strings.get(value) if kind is str or kind is int else None
                if piece is None:
                    piece = self._piece(ORDERING_SLOT, value)
                if piece is not None:
                    parts.append(piece[0])
                    key = piece[1]
        topic = 0
        for route in self._routes:
            value = event.get(route.path[0])
            if len(route.path) > 1 and value is not None:
                value = field_of(value, route.path[1:])
            if value is None:
                continue
            if value == route.text if type(value) is str else scalar_text(value) == route.value:
                topic = route.topic
                break
        return b"".join(parts), (topic, key)

    def _piece(self, slot: int, value: object) -> tuple[bytes, bytes] | None:
        """The encoded attribute entry (or ordering key field) for a field's
        value, and its text; None when it is skipped, counted. Encodings are
        cached by value: the same few values (a kind, a status, a user id)
        recur, and encoding one costs more than finding it."""
        kind = type(value)
        if kind is dict or kind is list:
            self._skipped[Skip.NOT_SCALAR] += 1
            return None
        cached: tuple[bytes, bytes] | str | None
        if (kind is str and len(value) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES) or (  # type: ignore[arg-type]
            kind is float and value == 0.0
        ):
            # Never cached: too long in any case; or a zero, since -0.0 ==
            # 0.0 (one hash, one key) but their texts differ.
            cached = self._encode(slot, value)
        else:
            cache_key = (slot, kind, value)  # the type too: True == 1 == 1.0, not as text
            cached = self._pieces.get(cache_key)
            if cached is None:
                cached = self._encode(slot, value)
                if len(self._pieces) >= PIECES_CACHED:
                    self._pieces.clear()
                    for strings in self._strings.values():
                        strings.clear()
                self._pieces[cache_key] = cached
        if isinstance(cached, str):
            self._skipped[cached] += 1
            return None
        if kind is str or kind is int:
            self._strings[slot][value] = cached
        return cached

    def _encode(self, slot: int, value: object) -> tuple[bytes, bytes] | str:
        """What ``_piece`` caches: (piece, text), or the reason it is skipped."""
        raw = scalar_text(value)
        assert raw is not None  # objects and arrays were turned away before
        if slot == ORDERING_SLOT:
            if len(raw) > PUBSUB_MAX_ORDERING_KEY_BYTES:
                return Skip.ORDERING_KEY_TOO_LONG
            return (b"\x2a" + varint(len(raw)) + raw if raw else b""), raw
        if len(raw) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES:
            return Skip.VALUE_TOO_LONG
        return encode_attribute(self._keys[slot], raw), raw

    def adopt_data(self, events: list[bytes]) -> list[tuple[Lane, bytes]]:
        """Events an earlier run spooled as plain data, given this
        configuration's metadata now. An item of the plain pipeline is an
        event's bytes, or a Body (a syslog event with its attributes,
        receive/dialects.py; ``from_data_record`` typed it): its data is
        built on, its attributes kept. They were JSON objects when accepted
        and the spool checksums them; one that somehow is not is still
        published, as bare data, rather than stopping the replay."""
        out = []
        for event in events:
            data, extra = event, b""
            if type(event) is Body:  # data first, then attributes
                data = data_of(event)
                extra = event[len(data_header(event)) + len(data) :]
            try:
                parsed = loads(data)
            except JSONDecodeError:
                parsed = None
            if type(parsed) is dict:
                out.append(self.build(data, parsed, extra))
            else:
                out.append(((0, b""), encode_data(data) + extra))
        return out


def _keepable(values: tuple[object, ...]) -> bool:
    """Whether a combination may be kept: small enough (a route's field is
    not bounded by the attribute limit, and a key keeps its strings alive),
    and no float zero among it (-0.0 == 0.0, one key, but they read apart)."""
    chars = 0
    for value in values:
        kind = type(value)
        if kind is str:
            chars += len(value)  # type: ignore[arg-type]
        elif kind is float and value == 0.0:
            return False
    return chars <= COMBO_MAX_CHARS


def to_data_record(items: list[bytes]) -> list[bytes]:
    """The plain path's items as a KIND_DATA record holds them: on disk a
    body is told from an event by its first byte, 0x0a, data's tag
    (spool/records.py), so an event that starts with that byte is written as
    a body holding only its data, which publishes the same. The usual list,
    with no such event, is returned as it is."""
    for item in items:
        if item[:1] == b"\x0a" and type(item) is not Body:
            return [
                body_of(item) if item[:1] == b"\x0a" and type(item) is not Body else item
                for item in items
            ]
    return items


def from_data_record(items: list[bytes]) -> list[bytes]:
    """A KIND_DATA record's items as the plain path carries them: a body
    (its first byte is 0x0a: spool/records.py) as a Body, an event as it is.
    Records that earlier releases wrote read the same way."""
    return [Body(item) if item[:1] == b"\x0a" else item for item in items]


def plain(kind: int, events: list[bytes]) -> list[bytes]:
    """Spooled events for the plain pipeline: a KIND_DATA record's as the
    plain path carries them; KIND_MESSAGES bodies give back their data (the
    metadata an earlier configuration added is not published)."""
    if kind == KIND_DATA:
        return from_data_record(events)
    return [data_of(body) for body in events]
