"""What /metrics, /healthz and the dashboard read of a running daemon
(observe/metrics.PipelineView): a view over its pipeline, settings and
health, made by the Daemon once startup has built the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingest.config import Settings
from ingest.observe.health import Verdict, evaluate
from ingest.pipeline.lanes import LaneQueue
from ingest.pipeline.queue import EventQueue
from ingest.publish.health import PubSubHealth
from ingest.receive.sources import DatagramSource
from ingest.spool import Spool
from ingest.stats import Stats
from ingest.systemd import Notifier
from ingest.wiring import Pipeline


class DaemonView:
    """Reads ``pipeline``; ``settings`` gives those in force (a reload
    replaces them); ``topic_paths``: every topic published to, fixed at
    startup, --topic's first."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        pipeline: Pipeline,
        topic_paths: tuple[str, ...],
        *,
        stats: Stats,
        spool: Spool | None,
        notifier: Notifier,
        health: PubSubHealth,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._topic_paths = topic_paths
        self.stats = stats
        self.spool = spool
        self.notifier = notifier
        self._health = health

    @property
    def sources(self) -> list[DatagramSource]:
        return self._pipeline.sources

    @property
    def queue(self) -> EventQueue | LaneQueue:
        return self._pipeline.queue

    @property
    def in_flight(self) -> int:
        return self._pipeline.pool.in_flight

    @property
    def listener_views(self) -> list[DatagramSource]:
        return self.sources

    @property
    def topic_path(self) -> str:
        return self._settings().topic_path

    @property
    def topic_paths(self) -> tuple[str, ...]:
        return self._topic_paths

    @property
    def udp_rcvbuf_requested(self) -> int:
        return self._settings().udp_rcvbuf_bytes

    def outage_s(self) -> float:
        return self._health.outage_s(asyncio.get_running_loop().time())

    def verdict(self) -> Verdict:
        queue = self.queue
        fill = max(queue.events / queue.max_events, queue.bytes / queue.max_bytes)
        problems = tuple(source.problem for source in self.sources if source.problem)
        if not self.sources:
            problems += ("no listener is bound",)
        if self.spool is not None and self.spool.problem:
            problems += (self.spool.problem,)
        return evaluate(self._health, asyncio.get_running_loop().time(), fill, problems)
