"""The two forms events travel the pipeline in, one chosen from the settings
by ``flow_for`` when the pipeline is built: what the rest of the daemon
holds is a ``Flow``, and nothing else asks which it is.

- ``PlainFlow``, without metadata: each event as its own bytes (a syslog
  event, with its facts, as a pubsub.Body) in one FIFO (queue.EventQueue,
  batch.Batcher), wrapped by the publisher in a PubsubMessage holding only
  ``data`` (pubsub.RequestEncoder).
- ``MessageFlow``, with metadata (attributes, ordering keys, routes, unix
  credentials): each event's PubsubMessage body built as it is decoded, in
  lanes (pipeline/lanes.py: MessageLanes, LaneQueue, LaneBatcher), framed
  as built (pubsub.BodyEncoder).

Why two: the plain events carried as messages in one lane cost 1.72 µs an
event in process against the plain path's 0.89 (``python -m tools.bench
lanes``, its ``one lane`` column; docs/design.md), a quarter more CPU for
the whole daemon. A flow is everything the two differ in: the queue and
its batcher, the request encoders, how a reader decodes, where leftovers
are spilled, what shutdown takes and puts back, what replay admits and
when it waits, and what a reload changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ingest.config import Listener, Settings
from ingest.pipeline.batch import Batcher
from ingest.pipeline.lanes import LaneBatcher, LaneQueue, MessageLanes, SpooledLanes
from ingest.pipeline.message import Lane, MessageBuilder, plain, to_data_record
from ingest.pipeline.queue import Chunk, EventQueue
from ingest.publish.publisher import Encoder, Filler, Spill
from ingest.publish.pubsub import BodyEncoder, RequestEncoder
from ingest.receive.codec import Decoder, decode_datagram, messages_decoder
from ingest.spool import Spool
from ingest.stats import Stats

# PublishRequest's own fields besides the topic path: its tag and length.
TOPIC_FIELD_OVERHEAD_BYTES = 8


@dataclass(frozen=True, slots=True)
class Decoding:
    """How a reader turns its datagrams into its flow's items. ``decode``:
    the JSON decoder. ``builder``: what the dialects build messages with
    (None: they write the plain path's items). ``credentials``: the reader
    learns each datagram's sender, which its wake-up hands to the builder."""

    decode: Decoder
    builder: MessageBuilder | None = None
    credentials: bool = False


class Flow(Protocol):
    """What wiring.Pipeline holds of one form of the pipeline."""

    @property
    def queue(self) -> EventQueue | LaneQueue:
        """What readers put into and replay fills."""
        ...

    @property
    def batcher(self) -> Filler:
        """What publishers fill their batches from."""
        ...

    @property
    def encoders(self) -> list[Encoder]:
        """By topic number (0: --topic): what turns a batch into a request."""
        ...

    @property
    def spill(self) -> Spill | None:
        """Where what a cancelled publisher held goes, and at shutdown what
        is queued, each lane's oldest first, until ``put_back``: the spool;
        None without one."""
        ...

    def decoding(self, listener: Listener, settings: Settings) -> Decoding:
        """How a reader for ``listener`` decodes under ``settings``."""
        ...

    def take_queued(self) -> list[tuple[Lane | None, Chunk]]:
        """Everything queued, taken out (shutdown), with its lane."""
        ...

    def put_back(self) -> None:
        """Shutdown, once everything is left: what must precede messages on
        disk goes ahead of them."""
        ...

    def admit(self, events: list[bytes], kind: int, topic: str, now: float) -> None:
        """One spooled record's events (of ``kind``, for ``topic``) into
        the queue (replay.Admit)."""
        ...

    def pauses_replay(self, failing_topics: Iterable[str]) -> bool:
        """Whether replay waits while ``failing_topics`` (IDs; some topic
        is failing) fail."""
        ...

    def reconfigure(self, settings: Settings, metadata_changed: bool) -> None:
        """A reload's bounds, and with ``metadata_changed`` its metadata."""
        ...


def spool_reading(settings: Settings) -> SpooledLanes | None:
    """What the flow ``settings`` ask for learns while the spool is opened
    and read, before the flow exists (flow_for's ``spooled``): the keyed
    lanes an earlier run spooled, for MessageFlow; nothing for PlainFlow,
    whose events have no order to keep across the spool."""
    return SpooledLanes(settings.topics) if settings.metadata else None


def flow_for(
    settings: Settings,
    stats: Stats,
    spool: Spool | None = None,
    spooled: SpooledLanes | None = None,
) -> Flow:
    """The flow ``settings`` ask for: MessageFlow when messages carry more
    than ``data`` (Settings.metadata), else PlainFlow. The form is fixed
    for the daemon's life: a reload cannot switch it (reload.py)."""
    if settings.metadata:
        return MessageFlow(settings, stats, spool, spooled)
    return PlainFlow(settings, stats, spool)


def _batch_bounds(settings: Settings) -> tuple[int, int, int, float]:
    """A batcher's bounds: count, request bytes, the request's own fields
    (the longest topic's, tag and length included), linger (the maximum
    latency, a keyword, is _max_latency_s's)."""
    reserved = max(len(path.encode()) for path in settings.topic_paths)
    return (
        settings.batch_max_messages,
        settings.batch_max_bytes,
        reserved + TOPIC_FIELD_OVERHEAD_BYTES,
        settings.batch_linger_ms / 1000,
    )


def _rebound(
    queue: EventQueue | LaneQueue, batcher: Batcher | LaneBatcher, settings: Settings
) -> None:
    """A reload's queue and batch bounds."""
    queue.max_events = settings.queue_max_events
    queue.max_bytes = settings.queue_max_bytes
    batcher.set_bounds(
        settings.batch_max_messages,
        settings.batch_max_bytes,
        settings.batch_linger_ms / 1000,
        max_latency_s=_max_latency_s(settings),
    )


def _max_latency_s(settings: Settings) -> float:
    return settings.batch_max_latency_ms / 1000


class PlainFlow:
    """Events as they arrived, in one FIFO; what the queue cannot hold
    goes straight to the spool."""

    def __init__(self, settings: Settings, stats: Stats, spool: Spool | None = None) -> None:
        self._spool = spool
        self.queue = EventQueue(
            settings.queue_max_events,
            settings.queue_max_bytes,
            stats,
            spill=self._spool_data if spool is not None else None,
        )
        self.batcher = Batcher(
            self.queue, *_batch_bounds(settings), max_latency_s=_max_latency_s(settings)
        )
        self.encoders: list[Encoder] = [RequestEncoder(settings.topic_path)]
        self.spill: Spill | None = self._leave if spool is not None else None

    def _spool_data(self, events: list[bytes]) -> None:
        assert self._spool is not None
        self._spool.append(to_data_record(events))

    def _leave(self, events: list[bytes], lane: Lane | None) -> None:
        self._spool_data(events)  # one topic, no keys: nothing on disk to precede

    def decoding(self, listener: Listener, settings: Settings) -> Decoding:
        return Decoding(decode_datagram)

    def take_queued(self) -> list[tuple[Lane | None, Chunk]]:
        return [(None, chunk) for chunk in self.queue.take_all()]

    def put_back(self) -> None:
        """Nothing to put ahead: without keys, no order to keep on disk."""

    def admit(self, events: list[bytes], kind: int, topic: str, now: float) -> None:
        """The events as they are (bodies typed again), and the data of
        messages an earlier run spooled with metadata (message.plain); the
        topic is --topic whatever it was."""
        self.queue.put(plain(kind, events), now)

    def pauses_replay(self, failing_topics: Iterable[str]) -> bool:
        """Always: the one topic is failing, and replayed events would only
        sit in memory, where a crash loses them, instead of on disk."""
        return True

    def reconfigure(self, settings: Settings, metadata_changed: bool) -> None:
        _rebound(self.queue, self.batcher, settings)


class MessageFlow:
    """PubsubMessage bodies in lanes, with the metadata of ``settings``:
    lanes.MessageLanes (the topics, builder, lane queue, and the spool's
    part in per-key order), and the batcher and encoders over them."""

    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        spool: Spool | None = None,
        spooled: SpooledLanes | None = None,
    ) -> None:
        self.lanes = MessageLanes(settings, stats, spool, spooled)
        self.queue = self.lanes.queue
        self.batcher = LaneBatcher(
            self.queue, *_batch_bounds(settings), max_latency_s=_max_latency_s(settings)
        )
        self.encoders: list[Encoder] = [BodyEncoder(path) for path in settings.topic_paths]
        self.spill: Spill | None = self.lanes.leave if spool is not None else None

    def decoding(self, listener: Listener, settings: Settings) -> Decoding:
        """Messages built by this configuration's builder, shared by every
        reader; a unix listener with credentials learns each datagram's
        sender."""
        builder = self.lanes.builder
        credentials = settings.unix_credentials and listener.kind == "unix"
        return Decoding(messages_decoder(builder.build), builder, credentials)

    def take_queued(self) -> list[tuple[Lane | None, Chunk]]:
        return [(lane, chunk) for lane, chunk in self.queue.take_all()]

    def put_back(self) -> None:
        """What of a keyed lane memory held goes ahead of its messages on
        disk (lanes.MessageLanes.put_back)."""
        self.lanes.put_back()

    def admit(self, events: list[bytes], kind: int, topic: str, now: float) -> None:
        self.lanes.admit(events, kind, topic, now)

    def pauses_replay(self, failing_topics: Iterable[str]) -> bool:
        """Unless every failing topic is parked while others publish: the
        others' spooled events, and the keys whose live messages follow
        theirs to disk, must not wait for a dead topic (what replay brings
        of a parked topic waits with it, parked)."""
        ids = self.lanes.topics
        failing = [ids.index(topic) if topic in ids else -1 for topic in failing_topics]
        return not self.queue.publishes_beside(failing)

    def reconfigure(self, settings: Settings, metadata_changed: bool) -> None:
        if metadata_changed:
            self.lanes.reconfigure(settings)
        _rebound(self.queue, self.batcher, settings)
