"""The pipeline: what events flow through, wired from the settings, apart
from the lifecycle that starts and stops it (daemon.py).

    readers (sources.DatagramSource, one per socket)
        -> queue -> batcher (of the flow: flows.PlainFlow's queue.EventQueue
           and batch.Batcher, or with metadata flows.MessageFlow's
           lanes.LaneQueue and lanes.LaneBatcher)
        -> publishers (publisher.PublisherPool) -> Pub/Sub
    and the spool (spool.Spool) for what the queue cannot hold.

Every part gets what it depends on when it is made; nothing is wired
afterwards. The flow is chosen once (flows.flow_for), and the pipeline asks
it, never which it is. A ``Pipeline`` starts nothing: its owner binds the
sockets (``add_reader``), starts the readers on a loop and runs
``pool.run_worker`` as tasks; a test can do the same in-process against the
emulator.
"""

from __future__ import annotations

import socket

from ingest.config import Listener, Settings
from ingest.flows import Flow, flow_for
from ingest.pipeline.lanes import LaneQueue, SpooledLanes
from ingest.pipeline.message import Lane
from ingest.pipeline.queue import Chunk, EventQueue
from ingest.publish.health import PubSubHealth
from ingest.publish.publisher import PublisherPool, Spill
from ingest.publish.pubsub import PubSubClient
from ingest.receive.dialects import GELF_PENDING_MAX_BYTES, Dialects
from ingest.receive.gelf import Reassembler
from ingest.receive.sources import DatagramSource
from ingest.receive.tapped import Hub
from ingest.spool import Spool
from ingest.stats import Stats


class Pipeline:
    """The flow, publisher pool and readers of one daemon.

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
        # Plain events, or PubsubMessage bodies in lanes with metadata
        # (attributes, ordering keys, routes, credentials): flows.py.
        self.flow: Flow = flow_for(settings, stats, spool, spooled)
        self.queue: EventQueue | LaneQueue = self.flow.queue
        self.pool = PublisherPool(
            client,
            self.flow.batcher,
            stats,
            settings.publish_timeout_s,
            health=health,
            spill=self.flow.spill,
            encoders=self.flow.encoders,
            topics=self.topic_ids,
        )
        self.sources: list[DatagramSource] = []

    def replay_paused(self) -> bool:
        """Whether spool replay waits: while Pub/Sub is failing, as the flow
        says (flows.Flow.pauses_replay)."""
        health = self.pool.health
        return health.failing and self.flow.pauses_replay(health.failing_topics())

    def add_reader(
        self,
        listener: Listener,
        sock: socket.socket,
        adopted: bool = False,
        *,
        settings: Settings | None = None,
        previous: DatagramSource | None = None,
    ) -> DatagramSource:
        """A reader for one bound socket, decoding for this pipeline's flow
        (not yet started, not yet among ``sources``). ``previous``: the
        reader it replaces at a reload, whose chunked GELF messages in
        progress it takes over."""
        settings = settings or self.settings
        decoding = self.flow.decoding(listener, settings)
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
            decoding.decode,
            self.stats,
            reassembler,
            max_event_bytes=settings.max_event_bytes,
            wrap_text=settings.syslog_wrap_text,
            builder=decoding.builder,
        )
        reader = DatagramSource(
            listener,
            sock,
            self.queue,
            self.stats,
            settings.max_datagram_bytes,
            allow=settings.udp_allow,
            adopted=adopted,
            decode=decoding.decode,
            dialects=dialects,
            credentials=decoding.credentials,
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
        self.flow.reconfigure(settings, metadata_changed)

    def spill_to_spool(self) -> Spill | None:
        """Where a publisher's or the queue's leftovers go at shutdown (each
        lane's oldest first: the publishers', then the queue's), until
        ``put_back``; None without a spool."""
        return self.flow.spill

    def put_back(self) -> None:
        """Shutdown, once everything is left: what of it must precede
        messages on disk goes ahead of them (flows.Flow.put_back)."""
        self.flow.put_back()

    def queued_by_lane(self) -> list[tuple[Lane | None, Chunk]]:
        """Everything queued, taken out (shutdown), with its lane."""
        return self.flow.take_queued()
