"""The pipeline: what events flow through, wired from the settings, apart
from the lifecycle that starts and stops it (daemon.py).

    readers (sources.DatagramSource, one per socket)
        -> queue (queue.EventQueue, or lanes.LaneQueue with metadata)
        -> batcher (batch.Batcher, or lanes.LaneBatcher)
        -> publishers (publisher.PublisherPool) -> Pub/Sub
    and the spool (spool.Spool) for what the queue cannot hold.

Every part gets what it depends on when it is made; nothing is wired
afterwards. A ``Pipeline`` starts nothing: its owner binds the sockets
(``add_reader``), starts the readers on a loop and runs ``pool.run_worker``
as tasks; a test can do the same in-process against the emulator.
"""

from __future__ import annotations

import socket

from ingest.config import Listener, Settings
from ingest.pipeline.batch import Batcher
from ingest.pipeline.lanes import LaneBatcher, LaneQueue, MessageLanes, SpooledLanes
from ingest.pipeline.message import Lane, MessageBuilder
from ingest.pipeline.queue import Chunk, EventQueue
from ingest.publish.health import PubSubHealth
from ingest.publish.publisher import PublisherPool, Spill
from ingest.publish.pubsub import PubSubClient, RequestEncoder
from ingest.receive.codec import Decoder, decode_datagram, messages_decoder
from ingest.receive.dialects import GELF_PENDING_MAX_BYTES, Dialects
from ingest.receive.gelf import Reassembler
from ingest.receive.sources import DatagramSource
from ingest.receive.tapped import Hub
from ingest.spool import Spool
from ingest.stats import Stats

# PublishRequest's own fields besides the topic path: its tag and length.
TOPIC_FIELD_OVERHEAD_BYTES = 8


class Pipeline:
    """The queue, batcher, publisher pool and readers of one daemon.

    ``client``: the --topic's PubSubClient (requests to every topic go
    through its channel). ``spool``: where what the queue cannot hold goes,
    and what publishers still hold at shutdown; None: dropped and counted.
    ``spooled``: with metadata, the keyed lanes the spool held at startup
    (lanes.SpooledLanes, counted as Spool.open read it). ``tap``: the hub
    readers offer their datagrams to (``ingest tap``)."""

    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        client: PubSubClient,
        *,
        health: PubSubHealth | None = None,
        spool: Spool | None = None,
        spooled: SpooledLanes | None = None,
        tap: Hub | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.spool = spool
        self.tap = tap
        # The topics published to, by number (--topic's, then the routes'):
        # fixed, since queued lanes and the publishers name them so.
        self.topic_ids = settings.topics
        self.topic_paths = settings.topic_paths
        # The plain pipeline carries events as they arrived; with metadata
        # (attributes, ordering keys, routes, credentials) it carries
        # PubsubMessage bodies in lanes (pipeline/lanes.py).
        self.lanes = MessageLanes(settings, stats, spool, spooled) if settings.metadata else None
        self.queue: EventQueue | LaneQueue = (
            self.lanes.queue
            if self.lanes
            else EventQueue(
                settings.queue_max_events,
                settings.queue_max_bytes,
                stats,
                spill=spool.append if spool else None,
            )
        )
        # A request's own fields: the longest topic's, tag and length included.
        reserved = max(len(path.encode()) for path in self.topic_paths)
        bounds = (
            settings.batch_max_messages,
            settings.batch_max_bytes,
            reserved + TOPIC_FIELD_OVERHEAD_BYTES,
            settings.batch_linger_ms / 1000,
        )
        max_latency_s = settings.batch_max_latency_ms / 1000
        self.batcher: Batcher | LaneBatcher
        if isinstance(self.queue, LaneQueue):
            self.batcher = LaneBatcher(self.queue, *bounds, max_latency_s=max_latency_s)
            encoders = [RequestEncoder(path) for path in self.topic_paths]
        else:
            self.batcher = Batcher(self.queue, *bounds, max_latency_s=max_latency_s)
            encoders = []  # the pool's default: raw events to --topic
        self.pool = PublisherPool(
            client,
            self.batcher,
            stats,
            settings.publish_timeout_s,
            health=health,
            spill=self.spill_to_spool() if spool else None,
            encoders=encoders,
            topics=self.topic_ids,
        )
        self.sources: list[DatagramSource] = []

    def replay_paused(self) -> bool:
        """Whether spool replay waits: while Pub/Sub is failing, replayed
        events would only sit in memory, where a crash loses them, instead
        of on disk. Topics parked on their own while others publish do not
        pause it: the others' spooled events, and the keys whose live
        messages follow theirs to disk, must not wait for a dead topic (what
        replay brings of a parked topic waits with it, parked)."""
        health = self.pool.health
        if not health.failing:
            return False
        if not isinstance(self.queue, LaneQueue):
            return True
        ids = self.topic_ids
        failing = [ids.index(topic) if topic in ids else -1 for topic in health.failing_topics()]
        return not self.queue.publishes_beside(failing)

    def add_reader(
        self,
        listener: Listener,
        sock: socket.socket,
        adopted: bool = False,
        *,
        settings: Settings | None = None,
        previous: DatagramSource | None = None,
    ) -> DatagramSource:
        """A reader for one bound socket, decoding for this pipeline (not yet
        started, not yet among ``sources``). ``previous``: the reader it
        replaces at a reload, whose chunked GELF messages in progress it
        takes over."""
        settings = settings or self.settings
        decode: Decoder
        credentials: MessageBuilder | None
        if self.lanes is None:
            decode, credentials = decode_datagram, None
        elif settings.unix_credentials and listener.kind == "unix":
            # Its own builder: the reader sets each datagram's sender on it.
            credentials = self.lanes.builder.for_source()
            decode = messages_decoder(credentials.build)
        else:
            decode, credentials = messages_decoder(self.lanes.builder.build), None
        if previous is not None and previous.dialects is not None:
            reassembler = previous.dialects.reassembler
            reassembler.max_message_bytes = settings.max_event_bytes
        else:
            reassembler = Reassembler(GELF_PENDING_MAX_BYTES, settings.max_event_bytes)
        # Always: with JSON alone too, the others must be recognised to be
        # rejected as format_disabled rather than as bad JSON.
        dialects = Dialects(
            listener.label,
            settings.input_formats,
            decode,
            self.stats,
            reassembler,
            max_event_bytes=settings.max_event_bytes,
            wrap_text=settings.syslog_wrap_text,
            builder=credentials or (self.lanes.builder if self.lanes else None),
        )
        reader = DatagramSource(
            listener,
            sock,
            self.queue,
            self.stats,
            settings.max_datagram_bytes,
            allow=settings.udp_allow,
            adopted=adopted,
            decode=decode,
            dialects=dialects,
            credentials=credentials,
            # Without credentials DatagramSource refuses a list it could not
            # check (a reload that tried is undone), rather than admit everyone.
            allow_uids=settings.unix_allow_uids if listener.kind == "unix" else (),
            tap=self.tap,
        )
        if previous is not None:
            reader.take_over(previous)
        return reader

    def reconfigure(self, settings: Settings, metadata_changed: bool) -> None:
        """A reload's bounds and metadata (reload.py decided they may change);
        readers are rebuilt by their owner with ``add_reader``."""
        self.settings = settings
        if self.lanes is not None and metadata_changed:
            self.lanes.reconfigure(settings)
        self.queue.max_events = settings.queue_max_events
        self.queue.max_bytes = settings.queue_max_bytes
        self.batcher.set_bounds(
            settings.batch_max_messages,
            settings.batch_max_bytes,
            settings.batch_linger_ms / 1000,
            max_latency_s=settings.batch_max_latency_ms / 1000,
        )

    def spill_to_spool(self) -> Spill:
        """Where a publisher's or the queue's leftovers go at shutdown (each
        lane's oldest first: the publishers', then the queue's), until
        ``put_back``."""
        spool = self.spool
        assert spool is not None
        if self.lanes is not None:
            return self.lanes.leave
        return lambda events, lane: spool.append(events)

    def put_back(self) -> None:
        """Shutdown, once everything is left: what of it must precede
        messages on disk goes ahead of them (lanes.MessageLanes.put_back)."""
        if self.lanes is not None and self.spool is not None:
            self.lanes.put_back()

    def queued_by_lane(self) -> list[tuple[Lane | None, Chunk]]:
        """Everything queued, taken out (shutdown), with its lane."""
        if isinstance(self.queue, LaneQueue):
            return [(lane, chunk) for lane, chunk in self.queue.drain_all()]
        return [(None, chunk) for chunk in self.queue.drain_all()]
