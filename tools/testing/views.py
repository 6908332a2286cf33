"""A daemon's metrics view without a daemon: observe.metrics.PipelineView over
real Stats and a real queue, with listeners, spool and sd_notify as plain
values, for whatever renders what a daemon exports (the collector's tests,
the dashboard's, the generated metrics reference)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.config import INPUT_FORMATS
from ingest.observe.health import Verdict
from ingest.pipeline.queue import EventQueue
from ingest.stats import Stats


@dataclass
class Listener:
    """A ListenerView without a socket (every format by default)."""

    label: str
    kind: str = "udp"
    udp_inode: int | None = None  # none: no kernel drop counter, which could move
    rcvbuf_granted: int | None = 32 << 20
    problem: str | None = None
    input_formats: tuple[str, ...] = INPUT_FORMATS
    gelf_pending: tuple[int, int] | None = (0, 0)


@dataclass
class Spool:
    events: int = 0
    bytes: int = 0
    segments: int = 0
    corrupt_records: int = 0


@dataclass
class Notifier:
    enabled: bool = False  # no NOTIFY_SOCKET
    sent: int = 0
    dropped: int = 0


@dataclass
class View:
    """What the collector reads, every part a value a test sets."""

    stats: Stats = field(default_factory=Stats)
    listener_views: list[Listener] = field(default_factory=list)
    topic_paths: tuple[str, ...] = ("projects/p/topics/t",)
    spool: Spool | None = None
    notifier: Notifier = field(default_factory=Notifier)
    in_flight: int = 0
    udp_rcvbuf_requested: int = 32 << 20
    health: Verdict = field(default_factory=lambda: Verdict(True, ()))
    outage: float = 0.0
    queue: EventQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = EventQueue(1000, 1_000_000, self.stats)

    @property
    def topic_path(self) -> str:
        return self.topic_paths[0]

    def verdict(self) -> Verdict:
        return self.health

    def outage_s(self) -> float:
        return self.outage
