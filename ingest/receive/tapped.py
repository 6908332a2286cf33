"""The reader's side of ``ingest tap``: what one wake-up of a tapped reader
offers the hub, datagram by datagram. The hub is an interface defined here
(``Hub``); observe/tap.py's TapHub implements it and the daemon passes it in,
so nothing on the data path imports observe/.

Built by the reader only while a tap is connected, so the hot path pays
nothing otherwise. While one is, each datagram decodes into a reject counter
of its own (its reasons, without comparing totals), UDP datagrams are read
with ``recvfrom`` to learn their sender (receivers.py), and the outcome is
offered to the hub, which samples; only a datagram a tap takes is turned into
a record. The datagram's format and GELF's inflated text come from the
wake-up the decoders were given (wakeup.WakeUp).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from ingest.publish.pubsub import Body, data_of
from ingest.receive.codec import Decoder
from ingest.receive.dialects import GELF, JSON, UNKNOWN
from ingest.receive.wakeup import WakeUp
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
    decoded's, as its receive call noted it (None when it cannot tell)."""

    def __init__(self, hub: Hub, label: str) -> None:
        self.hub = hub
        self.label = label
        self.sender: str | None = None

    def decoders(
        self, decode: Decoder, other: Decoder, count_full: Callable[[bytes, WakeUp], int]
    ) -> tuple[Decoder, Decoder, Callable[[bytes, WakeUp], int]]:
        """The reader's JSON decoder, dialect decoder and full-queue counter,
        each offering every datagram's outcome to the hub."""
        hub, label = self.hub, self.label

        def watch(decoder: Decoder, json: bool) -> Decoder:
            def run(
                data: bytes, out: list[Any], rejected: MutableMapping[str, int], wake: WakeUp
            ) -> int:
                before = len(out)
                reasons: defaultdict[str, int] = defaultdict(int)
                count = decoder(data, out, reasons, wake)
                for reason, n in reasons.items():
                    rejected[reason] += n
                if count:
                    fmt = JSON if json else wake.format
                    text = wake.text if fmt == GELF else None
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
                            text=text,
                        ),
                    )
                return count

            return run

        def dropped(data: bytes, wake: WakeUp) -> int:
            count = count_full(data, wake)
            if count:
                fmt = wake.format
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
        text: bytes | None = None,
    ) -> dict[str, object]:
        """What a tap shows of one datagram: who sent it, what it was taken
        for, what became of it, and its text (``text``, GELF's inflated
        payload, when there is one; not UTF-8 bytes escaped), cut at
        TEXT_BYTES. ``event``: the first event published from it, when that
        is not the text itself (statsd's JSON, say)."""
        shown = data if text is None else text
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
