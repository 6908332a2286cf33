"""GELF datagrams: recognition, bounded decompression, chunk reassembly.

Pure: no I/O, no clock (the caller passes ``now``, a monotonic time such as
``loop.time()``), no pipeline knowledge.

The format (Graylog Extended Log Format over UDP)
--------------------------------------------------
A GELF message is one JSON object. A datagram carries it

- uncompressed: plain JSON, not this module's business (the ordinary decoder);
- zlib (graypy, pygelf, most clients: ``zlib.compress(json)``): a zlib header,
  CMF ``0x78`` and an FLG byte that makes ``CMF * 256 + FLG`` a multiple of 31;
- gzip (Docker's gelf log driver by default): ``1f 8b``;
- chunked, when the (compressed or plain) message is larger than the sender's
  chunk size (graypy: 1420 bytes by default, 8154 on a LAN): each chunk is one
  datagram, ``1e 0f``, an 8-byte message id, a 1-byte sequence number, a 1-byte
  sequence count, then a slice of the message. The concatenated slices, in
  sequence order, are again a zlib, gzip or plain JSON payload (``unwrap``).

``kind(data)`` tells them apart with byte compares only. ``0x78`` is ASCII
``x``, so a statsd line such as ``x.y:1|c`` starts like zlib: the second byte
must complete a valid header, and one asking for a preset dictionary (FDICT,
which no GELF sender uses and which we could not inflate) is not taken either.
That leaves FLG 01, 5e, 9c, da: the four compression levels.

Bounds
------
- ``decompress``/``unwrap`` never produce more than ``max_bytes + 1`` bytes of
  output: a decompression bomb costs about ``max_bytes`` of memory and the time
  to inflate that much, then is refused as ``too_large``.
- GELF allows at most 128 chunks per message (``max_chunks``), all arriving
  within 5 seconds of the first (``timeout_s``).
- A message's reassembled size is bounded by ``max_message_bytes``.
- Incomplete messages together are bounded by ``max_pending_bytes``: their
  chunk bytes plus an estimate of the structure holding them (a few hundred
  bytes a message, a few dozen a chunk; measured with tracemalloc), so a flood
  of tiny chunks cannot hold much more memory than the bound says. When a chunk
  to be stored would exceed it, the OLDEST other incomplete messages are
  evicted, each counted ``gelf_pending_full``: a flood of junk ages out instead
  of locking legitimate senders out (refusing new messages would do that). Only
  a message that could not fit even alone is refused itself. The chunk that
  completes a message needs no room: it is joined and handed back at once.
- The keys of recently ended messages (below) are kept apart from that bound,
  at most ``max_finished`` of them (about 240 bytes each: 1 MB by default).
- Per-chunk work is O(1) (a dict lookup, a slot store); the message is joined
  once, when complete; ``expire`` and eviction only touch what they drop.

Accounting
----------
ingest counts *events*: received = accepted + rejected + ... . A GELF message
is one event. Every message the Reassembler sees ends in exactly one outcome:

- completed: ``add`` returns its payload (``completed`` counts them). The
  caller ``unwrap``s it (a ``GelfError`` is one event received and rejected
  with ``error.reason``) and decodes the JSON like any datagram's;
- abandoned: ``abandoned[reason] += 1``, for the caller to add to **events
  received and events rejected** (by that reason), one event each:

  ``gelf_incomplete``       not all chunks within ``timeout_s`` of the first
                            (``expire``, also run by ``add`` when due);
  ``gelf_pending_full``     evicted, or refused, for the ``max_pending_bytes``
                            bound;
  ``gelf_too_many_chunks``  sequence count above ``max_chunks``;
  ``gelf_invalid_chunk``    a header too short to read, a sequence count of 0,
                            a sequence number >= the count, or a count unlike
                            the message's earlier chunks';
  ``too_large``             payload above ``max_message_bytes``.

Chunk datagrams that add nothing to a live message are counted in
``ignored``, for the caller to add to **datagrams ignored** (never events):

  ``gelf_duplicate_chunk``  a sequence number the pending message already has;
  ``gelf_late_chunk``       a chunk of a message that already ended (completed
                            or abandoned) within the last ``timeout_s``.

Both are ``Counter``s with keys from the fixed vocabularies ``ABANDON_REASONS``
and ``IGNORE_REASONS``; the Reassembler only adds to them, so a caller may
move their counts into its own stats and ``clear()`` them (once a wake-up,
say). A message still pending is in flight, counted nowhere yet: at shutdown,
``expire(math.inf)`` ends them all as ``gelf_incomplete``.

What "a message" is: the first chunk seen for a (sender, message id) starts
one, and every later chunk for that key belongs to it, until the message ended
more than ``timeout_s`` ago. Two senders may use the same id without mixing.
The memory of ended messages (to call their stray chunks late rather than
start a phantom message with them) is bounded by ``max_finished`` keys; past
that, or past ``timeout_s``, a stray chunk starts a new message (one that
will most likely end ``gelf_incomplete``): counted, once, just not recognised
as a stray. A chunk with sequence count 1 is a whole message in itself (some
clients send small records so): it completes at once, never touches the
tables, and so a sender reusing its id for such records loses none of them.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Hashable
from typing import cast

from ingest.vocabulary import Ignore, Reject

# kind() results
ZLIB = "zlib"
GZIP = "gzip"
CHUNK = "chunk"

HEADER_BYTES = 12  # magic 2, message id 8, sequence number 1, sequence count 1
MAX_CHUNKS = 128  # the GELF spec's limit
TIMEOUT_S = 5.0  # the GELF spec: all chunks within 5 seconds of the first

# GelfError reasons (rejected events): ``too_large`` is Reject.TOO_LARGE's label
# on purpose: the event is over a size bound either way.
ERROR_REASONS = (Reject.TOO_LARGE, Reject.INVALID_GELF)

# Reassembler.abandoned reasons: messages, each one event rejected.
ABANDON_REASONS = (
    Reject.GELF_INCOMPLETE,
    Reject.GELF_PENDING_FULL,
    Reject.GELF_TOO_MANY_CHUNKS,
    Reject.GELF_INVALID_CHUNK,
    Reject.TOO_LARGE,
)

# Reassembler.ignored reasons: datagrams, never events.
IGNORE_REASONS = (Ignore.GELF_DUPLICATE_CHUNK, Ignore.GELF_LATE_CHUNK)

# The FLG bytes that, after CMF 0x78, make a zlib header we can inflate: FCHECK
# right, FDICT (0x20) clear. Computed from the rule, it is {01, 5e, 9c, da}.
_ZLIB_FLG = frozenset(flg for flg in range(256) if (0x7800 + flg) % 31 == 0 and not flg & 0x20)

# Estimated memory of an incomplete message beyond its chunks' bytes (measured
# with tracemalloc on CPython 3.11, a UDP sender address as the sender): the
# _Pending object, its parts list (plus a pointer a slot), the key tuple, the
# message id, the sender tuple it holds, the dict entry; and a chunk's bytes
# object header.
_MESSAGE_COST = 384
_SLOT_COST = 8
_CHUNK_COST = 40


class GelfError(Exception):
    """A payload that cannot become JSON; ``reason`` is one of ERROR_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def kind(data: bytes) -> str | None:
    """The payload's kind by its first two bytes: "zlib", "gzip" or "chunk";
    None for anything else (plain JSON included)."""
    if len(data) < 2:
        return None
    first = data[0]
    if first == 0x78:
        return ZLIB if data[1] in _ZLIB_FLG else None
    if first == 0x1F:
        return GZIP if data[1] == 0x8B else None
    if first == 0x1E:
        return CHUNK if data[1] == 0x0F else None
    return None


def decompress(data: bytes, max_bytes: int) -> bytes:
    """Inflate a zlib or gzip payload of at most ``max_bytes`` bytes.

    Raises GelfError: ``too_large`` as soon as the output would pass
    ``max_bytes`` (having produced at most one byte more), ``invalid_gelf`` for
    anything else: not zlib or gzip, corrupt, truncated, a failed checksum,
    bytes after the end of the stream (a second gzip member included).
    """
    if max_bytes < 0:  # max_length 0 would mean "unbounded" to zlib
        raise ValueError("max_bytes must be >= 0")
    what = kind(data)
    if what == ZLIB:
        wbits = zlib.MAX_WBITS
    elif what == GZIP:
        wbits = 16 + zlib.MAX_WBITS  # gzip header and trailer, checked
    else:
        raise GelfError(Reject.INVALID_GELF)
    inflater = zlib.decompressobj(wbits)
    try:
        # One byte more than allowed tells "exactly max_bytes" from "more".
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise GelfError(Reject.INVALID_GELF) from exc
    if len(out) > max_bytes:
        raise GelfError(Reject.TOO_LARGE)
    # Under the limit all input was consumed: short of the stream's end means
    # truncated; input past it is garbage.
    if not inflater.eof or inflater.unused_data:
        raise GelfError(Reject.INVALID_GELF)
    return out


def unwrap(payload: bytes, max_bytes: int) -> bytes:
    """The JSON bytes of a whole GELF payload (a datagram, or a reassembled
    chunked message): inflated if its header says zlib or gzip, else as is.
    Never more than ``max_bytes``; raises GelfError like ``decompress``. Only
    one layer is inflated, and nothing is parsed: what is returned may still
    fail as JSON (a payload that was itself chunked, for one)."""
    what = kind(payload)
    if what in (ZLIB, GZIP):
        return decompress(payload, max_bytes)
    if len(payload) > max_bytes:
        raise GelfError(Reject.TOO_LARGE)
    return payload


class _Pending:
    """An incomplete message: its chunks by sequence number."""

    __slots__ = ("cost", "count", "deadline", "have", "parts", "size")

    def __init__(self, count: int, deadline: float, seq: int, part: bytes, cost: int) -> None:
        self.count = count
        self.deadline = deadline  # first chunk's time + timeout
        self.parts: list[bytes | None] = [None] * count
        self.parts[seq] = part
        self.have = 1  # parts present
        self.size = len(part)  # their payload bytes (max_message_bytes)
        self.cost = cost  # charged to pending_bytes


_Key = tuple[Hashable, bytes]  # (sender, message id)


class Reassembler:
    """Chunked GELF messages, put back together per (sender, message id).

    See the module docstring for the bounds and the accounting; ``completed``,
    ``abandoned`` and ``ignored`` are its counters.
    """

    def __init__(
        self,
        max_pending_bytes: int,
        max_message_bytes: int,
        timeout_s: float = TIMEOUT_S,
        max_chunks: int = MAX_CHUNKS,
        max_finished: int = 4096,
    ) -> None:
        if max_pending_bytes <= 0 or max_message_bytes < 0 or timeout_s <= 0:
            raise ValueError("bounds must be positive")
        if not 1 <= max_chunks <= 255:  # the count is one byte
            raise ValueError("max_chunks must be in 1..255")
        if max_finished < 1:
            raise ValueError("max_finished must be >= 1")
        self.max_pending_bytes = max_pending_bytes
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.max_chunks = max_chunks
        self.max_finished = max_finished
        self.completed = 0
        self.abandoned: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        # Both dicts are in time order (insertion order, ``now`` monotonic), so
        # the oldest entry is the first: expiry and eviction pop from the front.
        self._pending: dict[_Key, _Pending] = {}
        self._finished: dict[_Key, float] = {}  # ended message -> forget at
        self._pending_bytes = 0
        # The earliest deadline in either dict: add() runs expire() only when
        # it has passed, so outcomes do not depend on how often the caller does.
        self._next_expiry = math.inf

    @property
    def pending_bytes(self) -> int:
        """Estimated memory held by incomplete messages (<= max_pending_bytes)."""
        return self._pending_bytes

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    def add(self, chunk: bytes, sender: Hashable, now: float) -> bytes | None:
        """Take one chunk datagram (``kind(chunk) == "chunk"``); return the
        message's payload when this chunk completes it, else None (counted in
        ``abandoned`` or ``ignored`` when it ends or is no part of a message)."""
        if now >= self._next_expiry:
            self.expire(now)
        if len(chunk) < HEADER_BYTES:
            self.abandoned[Reject.GELF_INVALID_CHUNK] += 1  # no id: a message of its own
            return None
        seq = chunk[10]
        count = chunk[11]
        if count == 1 and seq == 0:
            if len(chunk) - HEADER_BYTES > self.max_message_bytes:
                self.abandoned[Reject.TOO_LARGE] += 1
                return None
            self.completed += 1
            return chunk[HEADER_BYTES:]
        key = (sender, chunk[2:10])
        entry = self._pending.get(key)
        if entry is None:
            self._start(key, seq, count, chunk, now)
            return None
        if count != entry.count or seq >= count:
            self._drop(key, entry, Reject.GELF_INVALID_CHUNK, now)
            return None
        if entry.parts[seq] is not None:
            self.ignored[Ignore.GELF_DUPLICATE_CHUNK] += 1
            return None
        part = chunk[HEADER_BYTES:]
        if entry.size + len(part) > self.max_message_bytes:
            self._drop(key, entry, Reject.TOO_LARGE, now)
            return None
        if entry.have + 1 == count:
            entry.parts[seq] = part
            del self._pending[key]
            self._pending_bytes -= entry.cost
            self._remember(key, now)
            self.completed += 1
            return b"".join(cast("list[bytes]", entry.parts))  # all present now
        cost = _CHUNK_COST + len(part)
        if entry.cost + cost > self.max_pending_bytes:  # could never complete
            self._drop(key, entry, Reject.GELF_PENDING_FULL, now)
            return None
        self._make_room(cost, entry, now)
        entry.parts[seq] = part
        entry.have += 1
        entry.size += len(part)
        entry.cost += cost
        self._pending_bytes += cost
        return None

    def expire(self, now: float) -> int:
        """Abandon the messages whose ``timeout_s`` has run out (now >= first
        chunk's time + timeout) as ``gelf_incomplete``; forget ended messages
        older than the timeout. Returns how many messages it abandoned."""
        pending = self._pending
        expired = 0
        while pending:
            key, entry = next(iter(pending.items()))
            if entry.deadline > now:
                break
            self._drop(key, entry, Reject.GELF_INCOMPLETE, now)
            expired += 1
        finished = self._finished
        while finished:
            key, forget_at = next(iter(finished.items()))
            if forget_at > now:
                break
            del finished[key]
        self._next_expiry = min(
            next(iter(pending.values())).deadline if pending else math.inf,
            next(iter(finished.values())) if finished else math.inf,
        )
        return expired

    def _start(self, key: _Key, seq: int, count: int, chunk: bytes, now: float) -> None:
        """The first chunk seen for ``key``: a new message, or a stray one."""
        if key in self._finished:
            self.ignored[Ignore.GELF_LATE_CHUNK] += 1
            return
        part = chunk[HEADER_BYTES:]
        cost = _MESSAGE_COST + _SLOT_COST * count + _CHUNK_COST + len(part)
        if count > self.max_chunks:
            reason = Reject.GELF_TOO_MANY_CHUNKS
        elif seq >= count:  # a count of 0 included
            reason = Reject.GELF_INVALID_CHUNK
        elif len(part) > self.max_message_bytes:
            reason = Reject.TOO_LARGE
        elif cost > self.max_pending_bytes:
            reason = Reject.GELF_PENDING_FULL
        else:
            self._make_room(cost, None, now)
            entry = _Pending(count, now + self.timeout_s, seq, part, cost)
            self._pending[key] = entry
            self._pending_bytes += cost
            self._next_expiry = min(self._next_expiry, entry.deadline)
            return
        # Ended at its first chunk; remembered, so that its other chunks are
        # late rather than each a new message.
        self.abandoned[reason] += 1
        self._remember(key, now)

    def _make_room(self, cost: int, own: _Pending | None, now: float) -> None:
        """Evict the oldest incomplete messages other than ``own`` until
        ``cost`` more bytes fit. The callers checked that ``own`` and ``cost``
        fit alone, so this ends before it would need to evict ``own``."""
        limit = self.max_pending_bytes - cost
        pending = self._pending
        while self._pending_bytes > limit:
            entries = iter(pending.items())
            key, entry = next(entries)
            if entry is own:
                key, entry = next(entries)
            self._drop(key, entry, Reject.GELF_PENDING_FULL, now)

    def _drop(self, key: _Key, entry: _Pending, reason: str, now: float) -> None:
        """End a pending message unfinished."""
        del self._pending[key]
        self._pending_bytes -= entry.cost
        self.abandoned[reason] += 1
        self._remember(key, now)

    def _remember(self, key: _Key, now: float) -> None:
        """Keep an ended message's key for ``timeout_s``, so that its stray
        chunks (duplicates, late ones) are ignored, not a new message."""
        finished = self._finished
        if len(finished) >= self.max_finished:  # forget the oldest early
            del finished[next(iter(finished))]
        forget_at = now + self.timeout_s
        finished[key] = forget_at
        self._next_expiry = min(self._next_expiry, forget_at)
