"""Verify delivery for `make bench`: pull a subscription and count what arrived.

Every message must be a load-generator event (tools.loadgen) whose bytes are
exactly what was sent for its sequence number; distinct sequence numbers are
counted in a bitmap, duplicates and anything else are counted apart. The
emulator's publish_time minus the event's send time gives the end-to-end
latency (datagram sent -> stored by Pub/Sub).

Pulls and acks strictly in turn on one stream of calls: with any message
outstanding the emulator re-copies the whole backlog on every Pull, so
concurrent or ack-less pulling is quadratic (see tools/emulator.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as t

from tools.loadgen import event_bytes, parse_event

_PullRequest = t.PullRequest.pb()
_PullResponse = t.PullResponse.pb()
_AckRequest = t.AcknowledgeRequest.pb()
PULL_MAX_MESSAGES = 100  # the emulator's cap per Pull
EMPTY_PULLS_TO_FINISH = 3  # consecutive empty Pulls, EMPTY_PAUSE_S apart
EMPTY_PAUSE_S = 0.1
RPC_TIMEOUT_S = 30.0


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
    latencies_us: list[int] = field(default_factory=list)  # per distinct event

    def latency_ms(self, *quantiles: float) -> list[float | None]:
        if not self.latencies_us:
            return [None for _ in quantiles]
        ordered = sorted(self.latencies_us)
        last = len(ordered) - 1
        return [ordered[min(last, int(q * len(ordered)))] / 1000 for q in quantiles]


def verify(
    channel: grpc.Channel, subscription: str, first_seq: int, expected: int, deadline_s: float
) -> Verification:
    """Pull and ack until the subscription is empty or ``deadline_s`` passes."""
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
    request = _PullRequest(
        subscription=subscription, max_messages=PULL_MAX_MESSAGES, return_immediately=True
    )
    result = Verification(first_seq=first_seq, expected=expected)
    seen = bytearray(expected)
    latencies = result.latencies_us
    empty = 0
    started = time.monotonic()
    deadline = started + deadline_s
    while time.monotonic() < deadline:
        received = pull(request, timeout=RPC_TIMEOUT_S).received_messages
        if not received:
            empty += 1
            if empty >= EMPTY_PULLS_TO_FINISH:
                result.complete = True
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
                seq, sent_us = parse_event(data)
            except ValueError:
                result.foreign += 1
                continue
            index = seq - first_seq
            if not 0 <= index < expected or data != event_bytes(seq, sent_us):
                result.foreign += 1
                continue
            if seen[index]:
                result.duplicates += 1
                continue
            seen[index] = 1
            published = message.publish_time
            publish_us = published.seconds * 1_000_000 + published.nanos // 1000
            latencies.append(publish_us - sent_us)
            result.last_publish_us = max(result.last_publish_us, publish_us)
    result.distinct = len(latencies)
    result.elapsed_s = time.monotonic() - started
    return result
