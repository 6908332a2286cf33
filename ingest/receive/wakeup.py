"""One wake-up of a reader: what its receive call and its decoders learn and
write while it reads, handed to each of them.

The read loop (sources.DatagramSource.read) makes one per wake-up and passes
it to the receive call (receivers.py) and to every decoder call (codec,
dialects, statsd); it reads it at the end of the wake-up to count and bound,
and a tap's records (tapped.py) read the datagram's format and text from it.
Nothing in it outlives the wake-up: what does (GELF messages awaiting chunks,
encoding caches) belongs to the listener (dialects.Dialects).
"""

from __future__ import annotations

from ingest.config import INPUT_FORMATS

_JSON = INPUT_FORMATS[0]

# One wake-up's budget, checked as each datagram is handled, so that one busy
# socket cannot starve the others, the publishers or /healthz: at most
# WAKEUP_MAX_DATAGRAMS datagrams, WAKEUP_MAX_EVENTS events, WAKEUP_MAX_BYTES
# bytes received and WAKEUP_MAX_BYTES bytes the decoders wrote
# (WakeUp.written), plus the one datagram that crosses a bound (which writes
# at most codec.MAX_DECODED_BYTES). A budget in datagrams alone would let one
# wake-up hold 256 x 21,835 events (a 64 KiB datagram of "{}\n" lines):
# seconds of work and hundreds of MiB before the queue's bounds are even
# consulted; one in bytes received alone would let three statsd datagrams
# write a GiB.
WAKEUP_MAX_DATAGRAMS = 256
WAKEUP_MAX_EVENTS = 8192
WAKEUP_MAX_BYTES = 1 << 20


class WakeUp:
    """``sender``: the attribute entries of the datagram being decoded's
    sender (--unix-credentials; receivers.Senders), b"" when credentials are
    off or the kernel could not tell. ``written``: the bytes the decoders
    wrote (events of their own, inflated GELF, the messages of datagrams of
    several events), kept or refused, which the reader ends a wake-up at as
    at bytes received. ``counts``: the events of each dialect (JSON's are
    what remains). ``absorbed``: GELF chunk datagrams that ended no message.
    ``denied``: datagrams of senders outside an allow-list, read and never
    decoded. ``format`` and ``text``: the last datagram's format and, for
    GELF, its inflated payload (None until one is inflated), for a tap."""

    __slots__ = ("absorbed", "counts", "denied", "format", "sender", "text", "written")

    def __init__(self) -> None:
        self.sender = b""
        self.written = 0
        self.counts: dict[str, int] = {}
        self.absorbed = 0
        self.denied = 0
        self.format = _JSON
        self.text: bytes | None = None
