"""Counters: plain integers and dicts, written on the hot path, read at scrape time.

The event loop is single-threaded, so no locks: every update happens inside
one callback, and between callbacks the accounting identity holds::

    received == published + rejected + dropped + queued + in_flight
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


def _counter() -> defaultdict[str, int]:
    return defaultdict(int)


@dataclass
class Stats:
    """Counters owned by the pipeline. Labels are bounded: listener labels come
    from configuration, reasons and codes from fixed vocabularies."""

    datagrams_received: defaultdict[str, int] = field(default_factory=_counter)  # by listener
    events_received: defaultdict[str, int] = field(default_factory=_counter)  # by listener
    datagrams_ignored: defaultdict[str, int] = field(default_factory=_counter)  # by reason
    rejected: defaultdict[str, int] = field(default_factory=_counter)  # events, by reason
    dropped: defaultdict[str, int] = field(default_factory=_counter)  # events, by reason
    publish_requests: defaultdict[str, int] = field(default_factory=_counter)  # by gRPC code
    published: int = 0
    publish_retries: int = 0
    receive_errors: int = 0

    def received_total(self) -> int:
        return sum(self.events_received.values())

    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def dropped_total(self) -> int:
        return sum(self.dropped.values())
