"""The reader's side of ``ingest tap``: what one wake-up of a tapped reader
offers the hub, datagram by datagram. The hub is an interface defined here
(``Hub``); observe/tap.py's TapHub implements it and the daemon passes it in,
so nothing on the data path imports observe/.

Built by the reader only while a tap is connected, so the hot path pays
nothing otherwise. While one is, each datagram decodes into a reject counter
of its own (its reasons, without comparing totals), UDP datagrams are read
with ``recvfrom`` to learn their sender, and the outcome is offered to the
hub, which samples; only a datagram a tap takes is turned into a record.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from ingest.publish.pubsub import Body, data_of
from ingest.receive.codec import Decoder
from ingest.receive.dialects import GELF, JSON, UNKNOWN, Dialects
from ingest.vocabulary import Drop, Reject

TEXT_BYTES = 1024  # of a datagram's text a tap shows

# A datagram's outcome: all its events accepted, some rejected, or not
# looked at because the queue was full (sources.py decides).
ACCEPTED, REJECTED, DROPPED = OUTCOMES = ("accepted", "rejected", "dropped")


class Hub(Protocol):
    """What a tapped reader offers its datagrams to (observe/tap.py's TapHub).
    ``active``: some tap is connected; readers read it once per wake-up."""

    @property
    def active(self) -> bool: ...

    def offer(
        self, listener: str, fmt: str, outcome: str, make_record: Callable[[], dict[str, object]]
    ) -> None: ...


class TappedWakeUp:
    """One wake-up of a tapped reader. ``sender``: the datagram being
    decoded's, as its receiver noted it (None when it cannot tell)."""

    def __init__(self, hub: Hub, label: str, dialects: Dialects | None) -> None:
        self.hub = hub
        self.label = label
        self.dialects = dialects
        self.sender: str | None = None

    def addressed_receiver(self, sock: socket.socket) -> Callable[[int], bytes]:
        """``recv`` for a UDP socket: recvfrom, noting the sender."""
        recvfrom = sock.recvfrom

        def receive(limit: int) -> bytes:
            data, address = recvfrom(limit)
            self.sender = f"{address[0]}:{address[1]}"
            return data

        return receive

    def decoders(
        self, decode: Decoder, other: Decoder, count_full: Callable[[bytes], int]
    ) -> tuple[Decoder, Decoder, Callable[[bytes], int]]:
        """The reader's JSON decoder, dialect decoder and full-queue counter,
        each offering every datagram's outcome to the hub."""
        hub, label, dialects = self.hub, self.label, self.dialects

        def watch(decoder: Decoder, json: bool) -> Decoder:
            def run(data: bytes, out: list[Any], rejected: MutableMapping[str, int]) -> int:
                before = len(out)
                reasons: defaultdict[str, int] = defaultdict(int)
                count = decoder(data, out, reasons)
                for reason, n in reasons.items():
                    rejected[reason] += n
                if count:
                    fmt = JSON if json or dialects is None else dialects.last_format
                    accepted = len(out) - before
                    outcome = ACCEPTED if not reasons else REJECTED
                    hub.offer(
                        label,
                        fmt,
                        outcome,
                        lambda: self.record(
                            data,
                            fmt,
                            outcome,
                            reasons,
                            events=count,
                            accepted=accepted,
                            published=out[before:],
                        ),
                    )
                return count

            return run

        def dropped(data: bytes) -> int:
            count = count_full(data)
            if count:
                fmt = JSON if dialects is None else dialects.last_format
                hub.offer(
                    label,
                    fmt,
                    DROPPED,
                    lambda: self.record(data, fmt, DROPPED, {Drop.QUEUE_FULL: count}, events=count),
                )
            return count

        return watch(decode, True), watch(other, False), dropped

    def oversize(self, data: bytes) -> None:
        """A datagram rejected whole as too large, before being looked at."""
        self.hub.offer(
            self.label,
            UNKNOWN,
            REJECTED,
            lambda: self.record(data, UNKNOWN, REJECTED, {Reject.TOO_LARGE: 1}, events=1),
        )

    def record(
        self,
        data: bytes,
        fmt: str,
        outcome: str,
        reasons: Mapping[str, int],
        *,
        events: int,
        accepted: int = 0,
        published: Sequence[Any] = (),
    ) -> dict[str, object]:
        """What a tap shows of one datagram: who sent it, what it was taken
        for, what became of it, and its text (GELF's inflated; not UTF-8
        bytes escaped), cut at TEXT_BYTES. ``event``: the first event
        published from it, when that is not the text itself (statsd's JSON,
        say)."""
        shown = data
        if fmt == GELF and self.dialects is not None and self.dialects.last_text is not None:
            shown = self.dialects.last_text
        record: dict[str, object] = {
            "time": time.time(),
            "listener": self.label,
            "sender": self.sender,
            "format": fmt,
            "outcome": outcome,
            "reason": next(iter(reasons), None),
            "events": events,
            "accepted": accepted,
            # Reasons are vocabulary members: plain strings for orjson's keys.
            "rejected": {str(reason): n for reason, n in reasons.items()},
            "text": shown[:TEXT_BYTES].decode("utf-8", "backslashreplace"),
            "truncated": len(shown) > TEXT_BYTES,
        }
        if published:
            first = published[0]
            event = data_of(first[1]) if isinstance(first, tuple) else first
            if type(event) is Body:  # a body on the plain path (dialects.py)
                event = data_of(event)
            if event != shown:
                record["event"] = event[:TEXT_BYTES].decode("utf-8", "backslashreplace")
        return record
