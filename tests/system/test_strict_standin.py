"""The strict stand-in (tools.testing.fakepubsub --strict): it refuses what
the real Pub/Sub refuses and the emulator accepts, and the daemon's metadata
pipeline, at and over every limit, gets nothing refused by it.

Why a fake here: the emulator takes requests the real service refuses
(different ordering keys in one request, over-long attributes, ...), so a
test against the emulator alone checks those rules only through ingest's own
checks. The stand-in's checks are separate code, written from the service's
documented limits (cloud.google.com/pubsub/quotas) and statuses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.pubsub_v1.types import pubsub as t

from ingest.config import (
    PUBSUB_MAX_ATTRIBUTE_KEY_BYTES,
    PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES,
    PUBSUB_MAX_ATTRIBUTES,
    PUBSUB_MAX_ORDERING_KEY_BYTES,
)
from tests.helpers import UnixSender
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator
from tools.testing.fakepubsub import REFUSAL_STATUS, FakePubSub, Refusal, refusal

PROJECT = "ingest-strict"
_names = itertools.count()
Message = dict[str, Any]


def request(*messages: Message, topic: str = "projects/p/topics/t") -> t.PublishRequest:
    return t.PublishRequest(topic=topic, messages=[t.PubsubMessage(**m) for m in messages])


def verdict(req: t.PublishRequest) -> Refusal | None:
    raw = t.PublishRequest.serialize(req)
    found = refusal(len(raw), t.PublishRequest.pb().FromString(raw))
    return None if found is None else found[0]


def attributes(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


# ------------------------------------------------------------ the checks alone
@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"data": b"x"}], None),
        ([{"attributes": {"a": "b"}}], None),  # attributes without data: taken
        ([{}], Refusal.EMPTY_MESSAGE),
        ([{"data": b"x"}, {}], Refusal.EMPTY_MESSAGE),
        ([{"data": b"x", "ordering_key": "a"}] * 3, None),
        ([{"data": b"x"}, {"data": b"y"}], None),  # no ordering key at all
        ([{"data": b"x", "ordering_key": "a"}, {"data": b"y"}], Refusal.MIXED_ORDERING_KEYS),
        (
            [{"data": b"x", "ordering_key": "a"}, {"data": b"y", "ordering_key": "b"}],
            Refusal.MIXED_ORDERING_KEYS,
        ),
        ([{"data": b"x", "attributes": attributes(PUBSUB_MAX_ATTRIBUTES)}], None),
        (
            [{"data": b"x", "attributes": attributes(PUBSUB_MAX_ATTRIBUTES + 1)}],
            Refusal.TOO_MANY_ATTRIBUTES,
        ),
        ([{"data": b"x", "attributes": {"k" * PUBSUB_MAX_ATTRIBUTE_KEY_BYTES: "v"}}], None),
        (
            [{"data": b"x", "attributes": {"k" * (PUBSUB_MAX_ATTRIBUTE_KEY_BYTES + 1): "v"}}],
            Refusal.ATTRIBUTE_KEY_TOO_LONG,
        ),
        # Bytes, not characters: 129 two-byte characters are 258 bytes.
        (
            [{"data": b"x", "attributes": {"é" * (PUBSUB_MAX_ATTRIBUTE_KEY_BYTES // 2 + 1): "v"}}],
            Refusal.ATTRIBUTE_KEY_TOO_LONG,
        ),
        ([{"data": b"x", "attributes": {"googkey": "v"}}], Refusal.RESERVED_ATTRIBUTE_KEY),
        ([{"data": b"x", "attributes": {"a": "v" * PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES}}], None),
        (
            [{"data": b"x", "attributes": {"a": "v" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES + 1)}}],
            Refusal.ATTRIBUTE_VALUE_TOO_LONG,
        ),
        (
            [
                {
                    "data": b"x",
                    "attributes": {"a": "é" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES // 2 + 1)},
                }
            ],
            Refusal.ATTRIBUTE_VALUE_TOO_LONG,
        ),
        ([{"data": b"x", "ordering_key": "o" * PUBSUB_MAX_ORDERING_KEY_BYTES}], None),
        (
            [{"data": b"x", "ordering_key": "o" * (PUBSUB_MAX_ORDERING_KEY_BYTES + 1)}],
            Refusal.ORDERING_KEY_TOO_LONG,
        ),
        ([{"data": b"x"}] * 1000, None),
        ([{"data": b"x"}] * 1001, Refusal.TOO_MANY_MESSAGES),
        ([], Refusal.NO_MESSAGES),
        ([{"data": b"x" * 9_999_000}], None),
        ([{"data": b"x" * 5_000_000}] * 2, Refusal.REQUEST_TOO_LARGE),
    ],
    ids=lambda v: v if isinstance(v, str) or v is None else None,
)
def test_strict_checks_follow_the_real_services_limits(
    messages: list[Message], expected: Refusal | None
) -> None:
    assert verdict(request(*messages)) == expected


def test_every_refusal_has_the_real_services_status() -> None:
    assert set(REFUSAL_STATUS) == set(Refusal)
    assert REFUSAL_STATUS[Refusal.MIXED_ORDERING_KEYS] == grpc.StatusCode.FAILED_PRECONDITION
    others = set(Refusal) - {Refusal.MIXED_ORDERING_KEYS}
    assert {REFUSAL_STATUS[r] for r in others} == {grpc.StatusCode.INVALID_ARGUMENT}


# --------------------------------------------------------- the server, over gRPC
@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePubSub]:
    log = tmp_path_factory.mktemp("strict") / "fakepubsub.log"
    fake = FakePubSub(str(log)).start(strict=True)
    try:
        yield fake
    finally:
        fake.stop()


def publish(host: str, req: t.PublishRequest) -> grpc.StatusCode:
    with grpc.insecure_channel(host) as channel:
        call = channel.unary_unary(
            "/google.pubsub.v1.Publisher/Publish",
            request_serializer=t.PublishRequest.serialize,
            response_deserializer=t.PublishResponse.deserialize,
        )
        try:
            call(req, timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


MIXED = ({"data": b"a", "ordering_key": "k1"}, {"data": b"b", "ordering_key": "k2"})


def test_strict_standin_answers_with_the_services_status_and_counts_it(
    strict: FakePubSub,
) -> None:
    strict.report(0, 0)  # forget what came before
    assert publish(strict.host, request(*MIXED)) == grpc.StatusCode.FAILED_PRECONDITION
    too_many = {"data": b"x", "attributes": attributes(PUBSUB_MAX_ATTRIBUTES + 1)}
    assert publish(strict.host, request(too_many)) == grpc.StatusCode.INVALID_ARGUMENT
    assert publish(strict.host, request({"data": b"ok"})) == grpc.StatusCode.OK
    report = strict.report(0, 0)
    assert report["refused"] == {"mixed_ordering_keys": 1, "too_many_attributes": 1}
    assert report["messages"] == 1
    assert report["topics"] == {"projects/p/topics/t": 1}


def test_the_emulator_accepts_what_the_strict_standin_refuses(emulator: Emulator) -> None:
    """Why the strict stand-in exists: the emulator publishes a request the
    real service answers FAILED_PRECONDITION."""
    topic = f"projects/{PROJECT}/topics/mixed-{next(_names)}"
    emulator.create_topic(topic)
    assert publish(emulator.host, request(*MIXED, topic=topic)) == grpc.StatusCode.OK


# ------------------------------------------ the daemon's metadata, end to end
def test_metadata_at_and_over_every_limit_is_never_refused(
    strict: FakePubSub, tmp_path: Path
) -> None:
    """Pub/Sub's limits each met exactly (100 attributes, a 256-byte key, a
    1,024-byte value and ordering key), each exceeded by one (ingest skips
    the attribute or key), many ordering keys in one batch window, a route:
    the strict stand-in refuses nothing and takes every event ingest says it
    published, on both topics."""
    long_key = "k" * PUBSUB_MAX_ATTRIBUTE_KEY_BYTES
    static = [f"s{i}=v" for i in range(PUBSUB_MAX_ATTRIBUTES - 3)] + [f"{long_key}=v"]
    flags = [arg for pair in static for arg in ("--attribute", pair)]
    flags += ["--attribute-field", "user=user", "--attribute-field", "note=note"]
    sock = tmp_path / "in.sock"
    strict.report(0, 0)
    daemons = Daemons(tmp_path, strict.host)
    try:
        daemon = daemons.start(
            "--project", PROJECT, "--topic", "events", "--metrics", "",
            "--input-formats", "json", "--unix", str(sock),
            "--batch-linger-ms", "50", *flags,
            "--ordering-key-field", "user", "--route", "events-routed:user=u0",
        )  # fmt: skip
        daemon.wait_ready()
        at_limit = "v" * PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES
        over = "é" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES // 2 + 1)  # 1,026 bytes
        key_at_limit = "u" * PUBSUB_MAX_ORDERING_KEY_BYTES
        key_over = "u" * (PUBSUB_MAX_ORDERING_KEY_BYTES + 1)
        events = [orjson.dumps({"seq": i, "user": f"u{i % 50}"}) for i in range(500)]
        events += [
            orjson.dumps({"seq": 1000, "user": "u1", "note": at_limit}),
            orjson.dumps({"seq": 1001, "user": "u2", "note": over}),
            orjson.dumps({"seq": 1002, "user": key_at_limit}),
            orjson.dumps({"seq": 1003, "user": key_over}),
            orjson.dumps({"seq": 1004, "user": {"not": "a scalar"}}),
            orjson.dumps({"seq": 1005}),
        ]
        with UnixSender(sock) as sender:
            for event in events:
                sender.send(event)
        assert daemon.stop() == 0
        counts = daemon.stopped_counts()
    finally:
        daemons.close()
    report = strict.report(0, 0)
    assert report["refused"] == {}, report["refused"]
    assert counts["published"] == counts["received"] == len(events)
    assert report["messages"] == len(events)
    routed = report["topics"].get(f"projects/{PROJECT}/topics/events-routed", 0)
    assert routed == 10  # u0: every 50th of the 500
    assert report["topics"][f"projects/{PROJECT}/topics/events"] == len(events) - routed
