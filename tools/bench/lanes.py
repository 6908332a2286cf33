"""Micro-benchmark of the metadata pipeline's own work, stage by stage, beside
the plain path's: µs per event to decode (and build), put into the queue,
fill batches and encode requests, in-process, with no socket and no Pub/Sub.

    .venv/bin/python -m tools.bench lanes [--runs 9] [--events 100000] [--keys 100] [--unique]

The events are tools.testing.loadgen's keyed ones, and the metadata configuration is
`make bench`'s: ``--attribute-field method=method --attribute-field
status=status --ordering-key-field user --route <topic>-routed:user=u0``, so
K keys make K lanes. ``--unique`` adds ``--attribute-field seq=seq``, a
value new in every event (the worst case for the builder's caches). Events are put a wake-up at a time (256), as a reader
puts them; everything is queued before batches are filled, so every request
is full: what is left is the per-event cost, not the per-request one
(`make bench`'s stand-in run shows that). Each stage's figure is its fastest
of ``--runs`` runs, which other work on the machine slows least.

Not a test (speed never is): it prints numbers for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from ingest.config import Listener, RouteRule, Settings
from ingest.flows import TOPIC_FIELD_OVERHEAD_BYTES
from ingest.pipeline.lanes import LaneBatcher, MessageLanes
from ingest.publish.publisher import Batch
from ingest.publish.pubsub import BodyEncoder
from ingest.receive.codec import Decoder, messages_decoder
from ingest.receive.wakeup import WakeUp
from ingest.stats import Stats
from ingest.wiring import Pipeline
from tools.testing.loadgen import datagram

WAKE_UP = 256  # datagrams a reader's wake-up puts at once, at most (wakeup.WAKEUP_MAX_DATAGRAMS)
STAGES = ("decode", "put", "fill", "encode")


class NoClient:
    """The pipeline's client is only asked for its topic here: nothing is sent."""

    topic_path = "projects/bench/topics/events"


def settings(metadata: bool, unique: bool = False) -> Settings:
    extra: dict[str, Any] = {}
    if metadata:
        fields = (("method", "method"), ("status", "status"))
        extra = {
            "attribute_fields": (*fields, ("seq", "seq")) if unique else fields,
            "ordering_key_field": "user",
            "routes": (RouteRule("events-routed", "user", "u0"),),
        }
    return Settings(
        project="bench",
        topic="events",
        listeners=(),
        queue_max_events=10**8,
        queue_max_bytes=1 << 40,
        **extra,
    )


def one_lane(stats: Stats) -> tuple[Decoder, Any, Any, list[BodyEncoder]]:
    """The plain configuration carried as messages in one lane: the lane
    queue, batcher and message decoder with no metadata at all, as one
    pipeline for both would carry plain events."""
    config = settings(False)
    lanes = MessageLanes(config, stats)
    reserved = len(NoClient.topic_path) + TOPIC_FIELD_OVERHEAD_BYTES
    batcher = LaneBatcher(
        lanes.queue,
        config.batch_max_messages,
        config.batch_max_bytes,
        reserved,
        config.batch_linger_ms / 1000,
    )
    decode = messages_decoder(lanes.builder.build)
    return decode, lanes.queue, batcher, [BodyEncoder(NoClient.topic_path)]


async def one_run(
    variant: str, datagrams: list[bytes], unique: bool, wake_up: int
) -> dict[str, float]:
    """Seconds per event of each stage, for one pass over ``datagrams``:
    ``variant`` is plain, metadata or one_lane."""
    stats = Stats()
    decode: Decoder
    if variant == "one_lane":
        decode, queue, batcher, encoders = one_lane(stats)
    else:
        config = settings(variant == "metadata", unique)
        pipeline = Pipeline(config, stats, NoClient())  # type: ignore[arg-type]
        decode = pipeline.flow.decoding(Listener("udp", host="127.0.0.1", port=0), config).decode
        queue, batcher, encoders = pipeline.queue, pipeline.flow.batcher, pipeline.flow.encoders
    rejected = stats.rejected
    clock: Callable[[], float] = time.perf_counter
    started = clock()
    wake_ups: list[list[Any]] = []
    for offset in range(0, len(datagrams), wake_up):
        out: list[Any] = []
        wake = WakeUp()
        for data in datagrams[offset : offset + wake_up]:
            decode(data, out, rejected, wake)
        wake_ups.append(out)
    decoded = clock()
    for out in wake_ups:
        queue.put(out, 0.0)
    put = clock()
    queue.close()
    batches = []
    while True:
        batch = Batch()
        if not await batcher.fill(batch):
            break
        batches.append(batch)
        batcher.done(batch)
    filled = clock()
    for batch in batches:
        encoders[batch.lane[0] if batch.lane else 0].encode(batch.messages)
    encoded = clock()
    assert sum(len(b) for b in batches) == len(datagrams)
    n = len(datagrams)
    marks = (started, decoded, put, filled, encoded)
    return {stage: (marks[i + 1] - marks[i]) / n for i, stage in enumerate(STAGES)}


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench lanes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument(
        "--wake-up",
        type=int,
        default=WAKE_UP,
        help="datagrams a wake-up puts (fewer when the daemon keeps up: each lane's part is "
        "smaller, and put's per-lane work shows)",
    )
    parser.add_argument(
        "--unique", action="store_true", help="also an attribute from a field new in every event"
    )
    args = parser.parse_args(argv)
    sent_us = 1_700_000_000_000_000
    results: dict[str, dict[str, float]] = {}
    # One lane: the plain events as messages in the lane queue, the question
    # whether one pipeline could carry both (plain events, run in turn with
    # the plain path so both see the same machine).
    variants = (("plain", 0), ("one_lane", 0), ("metadata", args.keys))
    for name, keys in variants:
        datagrams = [datagram(seq, sent_us + seq, keys) for seq in range(args.events)]
        runs = [
            asyncio.run(one_run(name, datagrams, args.unique, args.wake_up))
            for _ in range(args.runs)
        ]
        results[name] = {stage: min(run[stage] for run in runs) for stage in STAGES}
    print(
        f"µs per event, fastest of {args.runs} runs x {args.events:,} events ({args.keys} keys, "
        f"{args.wake_up} datagrams a wake-up); one lane: the plain events in the lane queue"
    )
    print(f"  {'stage':<8} {'plain':>8} {'one lane':>9} {'diff':>7} {'metadata':>9} {'diff':>7}")
    for stage in (*STAGES, "total"):
        if stage == "total":
            plain, lane, meta = (sum(results[n].values()) for n, _ in variants)
        else:
            plain, lane, meta = (results[n][stage] for n, _ in variants)
        print(
            f"  {stage:<8} {plain * 1e6:8.2f} {lane * 1e6:9.2f} {(lane - plain) * 1e6:+7.2f}"
            f" {meta * 1e6:9.2f} {(meta - plain) * 1e6:+7.2f}"
        )
    return {
        "runs": args.runs,
        "events": args.events,
        "keys": args.keys,
        "wake_up": args.wake_up,
        "unique": args.unique,
        "us_per_event": {
            name: {**{st: v * 1e6 for st, v in stages.items()}, "total": sum(stages.values()) * 1e6}
            for name, stages in results.items()
        },
    }
