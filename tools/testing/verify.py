"""Verify delivery for `make bench`: pull subscriptions and count what arrived.

Every message must be a load-generator event (tools.testing.loadgen) whose bytes are
exactly what the daemon publishes for its sequence number; distinct sequence
numbers are counted in a bitmap, duplicates and anything else are counted
apart. The emulator's publish_time minus the event's send time gives the
end-to-end latency (datagram sent -> stored by Pub/Sub).

Events sent with ``tools.testing.loadgen --format gelf`` or ``statsd`` are checked
the same way in the shape ingest publishes them (``fmt``): the inflated GELF
object (``_seq``, the send time from ``timestamp``), the JSON event ingest
writes for a statsd line (the sequence number is its ``value``; it carries
no send time, so such a run has no latencies).

The metadata run's daemon publishes to two topics (a route sends one user's
events to the second): their subscriptions are pulled in turn into the same
bitmap, so every sequence number is counted once whichever topic it reached,
and each message's attributes, ordering key and topic are checked against
``Metadata`` (a wrong one is counted, the event still delivered).

Pulls and acks strictly in turn on one stream of calls: with any message
outstanding the emulator re-copies the whole backlog on every Pull, so
concurrent or ack-less pulling is quadratic (see tools/testing/emulator.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as t

from tools.testing.loadgen import event_bytes, parse_event, user_of

_PullRequest = t.PullRequest.pb()
_PullResponse = t.PullResponse.pb()
_AckRequest = t.AcknowledgeRequest.pb()
PULL_MAX_MESSAGES = 100  # the emulator's cap per Pull
EMPTY_PULLS_TO_FINISH = 3  # consecutive empty Pulls, EMPTY_PAUSE_S apart
EMPTY_PAUSE_S = 0.1
RPC_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Metadata:
    """What the metadata run's messages carry besides their bytes: events
    sent with ``tools.testing.loadgen --keys keys``; each message with exactly
    ``attributes``, its ``user`` as ordering key, and on the second topic
    exactly when its user is ``routed``."""

    keys: int
    attributes: tuple[tuple[str, str], ...]
    routed: str

    def wrong(self, seq: int, attributes: Mapping[str, str], key: str, topic: int) -> bool:
        """Whether event ``seq``'s message (on topic number ``topic``: 0 the
        daemon's --topic, 1 the route's) carries anything but what it should."""
        user = user_of(seq, self.keys)
        return (
            key != user
            or (topic == 1) != (user == self.routed)
            or dict(attributes) != dict(self.attributes)
        )


@dataclass
class Verification:
    first_seq: int
    expected: int  # size of the sequence-number range that was sent
    distinct: int = 0
    duplicates: int = 0
    foreign: int = 0  # not an event we sent, or its bytes differ from what was sent
    pulled: int = 0
    complete: bool = False  # the subscription was emptied before the deadline
    elapsed_s: float = 0.0
    last_publish_us: int = 0
    latencies_us: list[int] = field(default_factory=list)  # per distinct event with a send time
    metadata_checked: bool = False  # the checks below were made (the metadata run)
    wrong_metadata: int = 0  # distinct events with wrong attributes, key or topic
    routed: int = 0  # distinct events that arrived on the second topic

    def latency_ms(self, *quantiles: float) -> list[float | None]:
        if not self.latencies_us:
            return [None for _ in quantiles]
        ordered = sorted(self.latencies_us)
        last = len(ordered) - 1
        return [ordered[min(last, int(q * len(ordered)))] / 1000 for q in quantiles]


def verify(
    channel: grpc.Channel,
    subscriptions: str | Sequence[str],
    first_seq: int,
    expected: int,
    deadline_s: float,
    *,
    metadata: Metadata | None = None,
    fmt: str = "json",
) -> Verification:
    """Pull and ack each subscription until it is empty or ``deadline_s``
    (for them all) passes. ``metadata``: the events were sent with keys; the
    second subscription is the route's topic's. ``fmt``: the events were sent
    as ``tools.testing.loadgen --format fmt``."""
    if isinstance(subscriptions, str):
        subscriptions = [subscriptions]
    pull = channel.unary_unary(
        "/google.pubsub.v1.Subscriber/Pull",
        request_serializer=_PullRequest.SerializeToString,
        response_deserializer=_PullResponse.FromString,
    )
    ack = channel.unary_unary(
        "/google.pubsub.v1.Subscriber/Acknowledge",
        request_serializer=_AckRequest.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )
    result = Verification(first_seq=first_seq, expected=expected)
    result.metadata_checked = metadata is not None
    keys = metadata.keys if metadata else 0
    seen = bytearray(expected)
    latencies = result.latencies_us
    started = time.monotonic()
    deadline = started + deadline_s
    complete = True
    for topic, subscription in enumerate(subscriptions):
        request = _PullRequest(
            subscription=subscription, max_messages=PULL_MAX_MESSAGES, return_immediately=True
        )
        emptied = False
        empty = 0
        while time.monotonic() < deadline:
            received = pull(request, timeout=RPC_TIMEOUT_S).received_messages
            if not received:
                empty += 1
                if empty >= EMPTY_PULLS_TO_FINISH:
                    emptied = True
                    break
                time.sleep(EMPTY_PAUSE_S)
                continue
            empty = 0
            ack(
                _AckRequest(subscription=subscription, ack_ids=[m.ack_id for m in received]),
                timeout=RPC_TIMEOUT_S,
            )
            result.pulled += len(received)
            for item in received:
                message = item.message
                data = message.data
                try:
                    seq, sent_us = parse_event(data, fmt)
                except ValueError:
                    result.foreign += 1
                    continue
                index = seq - first_seq
                if not 0 <= index < expected or data != event_bytes(seq, sent_us, keys, fmt):
                    result.foreign += 1
                    continue
                if seen[index]:
                    result.duplicates += 1
                    continue
                seen[index] = 1
                result.distinct += 1
                if metadata is not None:
                    result.routed += topic == 1
                    result.wrong_metadata += metadata.wrong(
                        seq, message.attributes, message.ordering_key, topic
                    )
                published = message.publish_time
                publish_us = published.seconds * 1_000_000 + published.nanos // 1000
                if sent_us is not None:
                    latencies.append(publish_us - sent_us)
                result.last_publish_us = max(result.last_publish_us, publish_us)
        complete = complete and emptied
    result.complete = complete
    result.elapsed_s = time.monotonic() - started
    return result
