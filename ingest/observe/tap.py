"""``GET /tap`` and ``ingest tap``: a live, rate-bounded sample of what arrives.

One ``TapHub`` per daemon, shared by every source. A tap is one HTTP client
on ``GET /tap``; its query filters what it sees:

* ``outcome=accepted|rejected|dropped`` -- repeatable or comma-separated;
  absent: all three;
* ``listener=LABEL`` -- exact label (``udp:127.0.0.1:8125``); repeatable, never
  comma-split (a unix path may hold a comma); absent: every listener;
* ``format=json|gelf|syslog|statsd|unknown`` -- repeatable or comma-separated;
  absent: all;
* ``limit=N`` -- the server closes the stream after N records.

Anything else, or a bad value, is a 400 with a one-line reason.

The data path pays nothing while nobody taps: sources read ``hub.active``
once per wake-up and call ``offer()`` per datagram only while it is True.
``offer()`` is O(taps), never blocks and never raises. Each tap has:

* a token bucket of RATE_PER_S records a second, bursts up to BURST: a
  human or ``jq`` reads a sample, not a firehose, whatever the load;
* a buffer of at most MAX_BUFFER_RECORDS records and MAX_BUFFER_BYTES bytes
  (plus one record) waiting for its client. A slow client fills its buffer,
  never the daemon's memory, and never slows ``offer()``: its socket gets at
  most one buffer's worth beyond the transport's high-water mark.

A record refused by the bucket or a full buffer is counted per tap; about
once a second (SKIP_REPORT_S), when that count is non-zero, the stream
carries ``{"skipped": N}``, so a reader knows the tap samples.

The stream is one JSON object per line (``application/x-ndjson``), in the key
order of the record the source built, until the client goes away (its EOF,
or anything it sends after the request, ends the tap at once, records flowing
or not), the limit is reached, or the server closes (``Tap.end`` on each:
what is buffered is written, then the connection closes). A client whose
stream stays blocked for STALL_S (it takes less than the transport's buffer
in that time) is cut off, which frees its slot.

A stream with nothing to say for HEARTBEAT_S carries an empty line (``jq``
and the CLI skip it): a tap may wait hours for a rare reject, and the
heartbeat is how its client tells a quiet daemon from one that froze or
whose host vanished without closing the connection (``SILENT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from ingest.config import INPUT_FORMATS
from ingest.observe.daemon_url import base_url, why
from ingest.ratelimit import LogLimiter
from ingest.receive.tapped import OUTCOMES
from ingest.vocabulary import TapExit

if TYPE_CHECKING:
    from http.client import HTTPResponse

log = logging.getLogger(__name__)

# What a datagram was taken for (receive/dialects.py); "unknown": rejected before
# being looked at (over --max-datagram-bytes).
FORMATS = (*INPUT_FORMATS, "unknown")
MAX_TAPS = 4
RATE_PER_S = 100.0
BURST = 200
MAX_BUFFER_RECORDS = 1000
MAX_BUFFER_BYTES = 1 << 20
SKIP_REPORT_S = 1.0
HEARTBEAT_S = 2.0
HEARTBEAT = b"\n"
STALL_S = 60.0  # a reader paused that long (Ctrl-Z, a stuck pipe) has left
MAX_QUERY_FIELDS = 32  # a handful of filters; more is not a person typing


@dataclass(frozen=True)
class TapFilter:
    """What one tap wants; None: no restriction on that field."""

    outcomes: frozenset[str] | None = None
    listeners: frozenset[str] | None = None
    formats: frozenset[str] | None = None
    limit: int | None = None

    def matches(self, listener: str, fmt: str, outcome: str) -> bool:
        return (
            (self.outcomes is None or outcome in self.outcomes)
            and (self.listeners is None or listener in self.listeners)
            and (self.formats is None or fmt in self.formats)
        )


def parse_query(query: bytes) -> TapFilter:
    """The filter a ``/tap?QUERY`` asks for (the raw bytes after ``?``);
    ValueError with a one-line reason."""
    outcomes: set[str] = set()
    listeners: set[str] = set()
    formats: set[str] = set()
    limit: int | None = None
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True,
            errors="strict", max_num_fields=MAX_QUERY_FIELDS,
        )  # fmt: skip
    except UnicodeDecodeError:  # raw bytes, or %-escapes that are not UTF-8
        raise ValueError("bad query: not ASCII, or escapes that are not UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"bad query: {exc}") from None
    for key, value in pairs:
        if key == "outcome":
            outcomes.update(_choices(key, value, OUTCOMES))
        elif key == "format":
            formats.update(_choices(key, value, FORMATS))
        elif key == "listener":
            if not value:
                raise ValueError("listener must not be empty")
            listeners.add(value)
        elif key == "limit":
            if limit is not None:
                raise ValueError("limit given twice")
            if not value.isascii() or not value.isdigit() or int(value) < 1:
                raise ValueError(f"limit must be a positive integer, not {value!r}")
            limit = int(value)
        else:
            raise ValueError(f"unknown parameter {key!r} (outcome, listener, format, limit)")
    return TapFilter(
        frozenset(outcomes) or None, frozenset(listeners) or None, frozenset(formats) or None, limit
    )


def _choices(key: str, value: str, allowed: Sequence[str]) -> list[str]:
    items = value.split(",")
    for item in items:
        if item not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {item!r}")
    return items


class Tap:
    """One client's filter, token bucket and buffer. Loop-thread only."""

    def __init__(self, wanted: TapFilter, tokens: float, now: float) -> None:
        self.filter = wanted
        self.tokens = tokens
        self.refilled_at = now
        self.lines: deque[bytes] = deque()
        self.buffered_bytes = 0
        self.skipped = 0  # refused by the bucket or a full buffer, not yet reported
        # Records it may still be given: the limit, counted when queued.
        self.remaining = wanted.limit if wanted.limit is not None else -1
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None  # the stream waits for records

    def take(self) -> list[bytes]:
        """Everything buffered, oldest first; the buffer is empty afterwards."""
        lines = list(self.lines)
        self.lines.clear()
        self.buffered_bytes = 0
        return lines

    @property
    def done(self) -> bool:
        """Limit reached and all written, or ended by the server."""
        return self.ended or (self.remaining == 0 and not self.lines)

    def end(self) -> None:
        """The server is closing: the stream writes what it holds and stops."""
        self.ended = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TapHub:
    """Who is tapping, and the sampling. One per daemon, shared by every source.

    ``active`` is True iff at least one tap is open; sources read it once per
    wake-up and, while it is False, pay nothing. Loop-thread only: offer()
    runs in the sources' callbacks, the streams in the HTTP server's tasks.
    The keywords are for tests; ``clock`` drives the token buckets only.
    """

    def __init__(
        self,
        *,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        max_records: int = MAX_BUFFER_RECORDS,
        max_bytes: int = MAX_BUFFER_BYTES,
        max_taps: int = MAX_TAPS,
        heartbeat_s: float = HEARTBEAT_S,
        stall_s: float = STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.active = False
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_taps = max_taps
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self._clock = clock
        self._taps: list[Tap] = []  # a list: offer() iterates it per datagram
        self._limiter = LogLimiter()

    @property
    def open_taps(self) -> int:
        return len(self._taps)

    def open(self, wanted: TapFilter) -> Tap | None:
        """A new tap, or None when max_taps are open already."""
        if len(self._taps) >= self.max_taps:
            return None
        tap = Tap(wanted, float(self.burst), self._clock())
        self._taps.append(tap)
        self.active = True
        return tap

    def close(self, tap: Tap) -> None:
        """The tap's stream is over: it leaves, and frees its slot."""
        with contextlib.suppress(ValueError):
            self._taps.remove(tap)
        self.active = bool(self._taps)

    def offer(
        self, listener: str, fmt: str, outcome: str, make_record: Callable[[], dict[str, object]]
    ) -> None:
        """Called per datagram only while active; outcome is "accepted",
        "rejected" or "dropped". Calls make_record() at most once, and only if
        a tap's filter matches and that tap has a token and buffer room; the
        record then goes, serialised once, to every such tap. A tap that
        matches but has no token or no room counts one skipped. Never blocks,
        never raises: a record that cannot be built or serialised is logged
        (rate-limited) and not shown."""
        chosen: list[Tap] | None = None
        now: float | None = None
        for tap in self._taps:
            if tap.remaining == 0 or tap.ended or not tap.filter.matches(listener, fmt, outcome):
                continue
            if now is None:
                now = self._clock()
            # Refilled at every look, never lazily: a bucket refilled only
            # when empty would credit a long idle time on top of a full burst.
            tap.tokens = min(
                float(self.burst), tap.tokens + (now - tap.refilled_at) * self.rate_per_s
            )
            tap.refilled_at = now
            if (
                tap.tokens < 1.0
                or len(tap.lines) >= self.max_records
                or tap.buffered_bytes >= self.max_bytes
            ):
                tap.skipped += 1
                continue
            tap.tokens -= 1.0
            if chosen is None:
                chosen = [tap]
            else:
                chosen.append(tap)
        if chosen is None:
            return
        try:
            line = orjson.dumps(make_record(), option=orjson.OPT_APPEND_NEWLINE)
        except Exception as exc:  # noqa: BLE001 -- a sample must never break the data path
            self._limiter.log(log, "record", logging.ERROR, "tap: record not shown: %r", exc)
            return
        for tap in chosen:
            tap.lines.append(line)
            tap.buffered_bytes += len(line)
            if tap.remaining > 0:
                tap.remaining -= 1
            tap.wake()

    async def stream(
        self, tap: Tap, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write the tap's records to its client until the client goes away,
        the limit is reached or the tap is ended; a HEARTBEAT after each
        heartbeat_s without a line. The caller has written the response head,
        and closes the tap and the connection afterwards. OSError (a reset
        client) and TimeoutError (one that took nothing for stall_s)
        propagate."""
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(_client_gone(reader))
        report_at = loop.time() + SKIP_REPORT_S
        heartbeat_at = loop.time() + self.heartbeat_s
        try:
            while True:
                out = tap.take()
                now = loop.time()
                finishing = tap.done or gone.done()
                if tap.skipped and (now >= report_at or finishing):
                    out.append(b'{"skipped":%d}\n' % tap.skipped)
                    tap.skipped = 0
                if now >= report_at:
                    report_at = now + SKIP_REPORT_S
                if not out and not finishing and now >= heartbeat_at:
                    out.append(HEARTBEAT)
                if out and not gone.done():
                    writer.writelines(out)
                    heartbeat_at = now + self.heartbeat_s
                    # A slow client blocks this stream only: offer() meanwhile
                    # fills the bounded buffer, then counts skipped.
                    async with asyncio.timeout(self.stall_s):
                        await writer.drain()
                if finishing:
                    return  # else a tap ended meanwhile is seen, and flushed, next round
                tap.waiter = loop.create_future()
                try:
                    # Wake for records, the client's EOF, the next report or heartbeat.
                    await asyncio.wait(
                        (tap.waiter, gone),
                        timeout=min(report_at, heartbeat_at) - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    tap.waiter.cancel()
                    tap.waiter = None
        finally:
            gone.cancel()


async def _client_gone(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes or resets its end, or sends anything:
    a tap's client has nothing to say after its request."""
    with contextlib.suppress(OSError):
        await reader.read(1)


# --- ``ingest tap``: the client. Stdlib only and nothing heavy: no rich. ---

CONNECT_TIMEOUT_S = 5.0
SILENT_S = 5 * HEARTBEAT_S  # no heartbeat for that long: the daemon froze, or its host vanished


def tap_path(
    outcomes: Sequence[str] = (),
    listeners: Sequence[str] = (),
    formats: Sequence[str] = (),
    limit: int | None = None,
) -> str:
    """``/tap?...`` for these filters; empty sequences mean no restriction."""
    query: list[tuple[str, str]] = []
    if outcomes:
        query.append(("outcome", ",".join(outcomes)))
    query += [("listener", listener) for listener in listeners]
    if formats:
        query.append(("format", ",".join(formats)))
    if limit is not None:
        query.append(("limit", str(limit)))
    return "/tap" + ("?" + urlencode(query) if query else "")


def run_tap(
    url: str,
    *,
    outcomes: Sequence[str] = (),
    listeners: Sequence[str] = (),
    formats: Sequence[str] = (),
    limit: int | None = None,
    silent_s: float = SILENT_S,
) -> int:
    """Print the daemon's tap to stdout, a line at a time (flushed, so
    ``| jq`` works live), and ``{"skipped": N}`` as a note on stderr.

    Returns a TapExit (its members say when each is returned); silent
    means nothing, not even a heartbeat, for silent_s.
    Connecting and the answer's head are bounded by CONNECT_TIMEOUT_S; the
    stream may carry no record for as long as nothing matches, so only its
    heartbeats bound the wait.
    """
    import http.client  # only the client pays for it, not the daemon

    base = base_url(url)
    where = base + "/tap"
    try:
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            return _say(f"{where}: not an http:// URL", TapExit.USAGE)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:  # a port that is not a number, a broken [IPv6]
        return _say(f"{where}: {exc}", TapExit.USAGE)
    path = parts.path + tap_path(outcomes, listeners, formats, limit)
    try:
        try:
            conn.request("GET", path)
            # Held here: getresponse() drops conn.sock for a Connection: close
            # answer, handing the socket to the response alone.
            sock = conn.sock
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            return _say(f"cannot reach {where}: {why(exc)}", TapExit.FAILURE)
        if response.status != 200:
            body = response.read(1024).decode(errors="replace").strip()
            line = body.splitlines()[0] if body else response.reason
            code = TapExit.USAGE if 400 <= response.status < 500 else TapExit.FAILURE
            return _say(f"{where}: {line} ({response.status})", code)
        content_type = response.getheader("Content-Type", "")
        if not content_type.startswith("application/x-ndjson"):
            return _say(
                f"{where}: not an ingest tap (Content-Type {content_type!r})", TapExit.USAGE
            )
        if sock is not None:
            sock.settimeout(silent_s)  # a record or a heartbeat comes sooner
        return _copy(response, where, limit, silent_s)
    except KeyboardInterrupt:
        return TapExit.OK
    finally:
        conn.close()


def _copy(response: HTTPResponse, where: str, limit: int | None, silent_s: float) -> int:
    """The stream's lines to stdout until it ends; the exit code."""
    from http.client import HTTPException

    shown = 0
    try:
        while line := response.readline():
            if line == HEARTBEAT:
                continue
            skipped = _skipped(line)
            if skipped is not None:
                _say(f"{skipped} datagrams not shown (tap rate limit)", TapExit.OK)
                continue
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except BrokenPipeError:  # `| head` has what it wanted
                _quiet_stdout()
                return TapExit.OK
            shown += 1
    except TimeoutError:
        message = f"the daemon sent nothing for {silent_s:g} s (frozen, or unreachable?)"
        return _say(f"{where}: {message}", TapExit.FAILURE)
    except (OSError, HTTPException) as exc:
        return _say(f"{where}: connection lost: {why(exc)}", TapExit.FAILURE)
    if limit is not None and shown >= limit:
        return TapExit.OK
    return _say(f"{where}: the daemon closed the tap (stopped?)", TapExit.FAILURE)


def _skipped(line: bytes) -> int | None:
    """N when the line is the stream's ``{"skipped": N}`` note."""
    if not line.startswith(b'{"skipped"'):
        return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and doc.keys() == {"skipped"} and isinstance(doc["skipped"], int):
        return doc["skipped"]
    return None


def _quiet_stdout() -> None:
    """stdout's reader left: point the descriptor at /dev/null, so the flush
    at exit does not print a BrokenPipeError traceback."""
    with contextlib.suppress(OSError), open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())


def _say(message: str, code: int) -> int:
    """One line on stderr, flushed (the stream goes on meanwhile); returns code."""
    sys.stderr.write(f"ingest tap: {message}\n")
    sys.stderr.flush()
    return code
