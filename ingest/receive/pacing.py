"""Read pacing: work per wake-up, not per datagram, at low rates.

Watched all the time, a socket receiving a few thousand datagrams a second
wakes the loop once per datagram, and each wake-up pays the whole chain
(epoll, the read's setup, the counters, a queue put). Instead, after a
wake-up that read few datagrams, the socket is read on a timer: every
``pause`` seconds, so that each read finds several waiting, the kernel
holding them meanwhile. The pause is chosen so that a read carries about
half FEW_DATAGRAMS at the recent rate, and is at most READ_PAUSE_MAX_S. A read
that finds nothing (traffic stopped) watches the socket again, so an idle
daemon wakes for nothing; a read that found many, or stopped at its budget,
or a rate at which the pause would be under READ_PAUSE_MIN_S (the loop's
timers are only that fine), watches it too: reads at high rates already
carry many datagrams each, and nothing changes there.

A datagram waits at most READ_PAUSE_MAX_S (plus the loop's own delay) on
the kernel before it is read, and at the recent rate a pause leaves about
half ``few`` there (a rate that doubles within one pause, ``few``, and the
read that finds them watches the socket again). For UDP ``few`` is
FEW_DATAGRAMS, far below what even the kernel's default buffer holds; a unix
socket's queue holds only net.unix.max_dgram_qlen datagrams (10 by default)
before senders get EAGAIN, so its reader passes that (sources.py), and its
pauses leave at most half of it waiting.

``ReadPacing`` decides (state only, no loop); ``PacedWatch`` is the loop's
side: it watches one file descriptor, or reads it on the timer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# The longest a datagram waits on the kernel before it is read. Short beside
# what a partial batch waits for the request budget anyway (a quarter of a
# second at batch.PARTIAL_REQUESTS_PER_S), and long enough that a read
# carries 20 datagrams at 1,000 a second and, FEW_DATAGRAMS permitting, 32
# at 2,000: fewer wake-ups, each paying the read's setup, the counters and a
# queue put once.
READ_PAUSE_MAX_S = 0.020
# The shortest pause worth a timer: uvloop's timers are in milliseconds.
READ_PAUSE_MIN_S = 0.001
# A read is paced to carry about half this many datagrams; one that carried
# this many or more is followed by watching the socket (the rate rose). So
# pacing stops where half of it arrive within READ_PAUSE_MIN_S: 32,000 a
# second.
FEW_DATAGRAMS = 64
# The recent rate is the datagrams read since a mark over the time since it;
# past this age both are halved, so the estimate follows a rate that changes
# within a few windows rather than averaging over the whole run.
RATE_WINDOW_S = 0.1


class ReadPacing:
    """After each read: how long to wait before the next (``after``), or
    None to watch the socket (read when it is readable)."""

    __slots__ = ("count", "few", "hold_until", "mark", "max_s", "min_s")

    def __init__(
        self,
        now: float,
        *,
        few: int = FEW_DATAGRAMS,
        max_s: float = READ_PAUSE_MAX_S,
        min_s: float = READ_PAUSE_MIN_S,
    ) -> None:
        self.few = few
        self.max_s = max_s
        self.min_s = min_s
        self.hold_until = -math.inf  # no pause before this (a burst's window)
        self.mark = now  # the start of the rate's window
        self.count = 0.0  # datagrams read since ``mark`` (halved with its age)

    def after(self, now: float, datagrams: int, more: bool) -> float | None:
        """A read at ``now`` took ``datagrams`` (``more``: its budget stopped
        it, the socket may hold more): the pause before the next read, or
        None: watch the socket."""
        if more or datagrams >= self.few:
            # The rate rose: a fresh window, not paced until it has spanned
            # RATE_WINDOW_S (an estimate over a spell of idling before the
            # burst would read far too low).
            self.mark = now
            self.count = float(datagrams)
            self.hold_until = now + RATE_WINDOW_S
            return None
        count = self.count + datagrams
        age = now - self.mark
        if age > 2 * RATE_WINDOW_S:
            count /= 2
            age /= 2
            self.mark = now - age
        self.count = count
        if not datagrams or now < self.hold_until:
            return None
        # At count / age datagrams a second, half of ``few`` take this long:
        # a read that carries ``few`` means the rate doubled.
        pause = min(self.max_s, self.few * max(age, self.min_s) / (2 * count))
        return pause if pause >= self.min_s else None


class PacedWatch:
    """Reads ``fd`` for the loop with ``read``, which returns (datagrams
    read, whether its budget stopped it): when the loop finds it readable,
    or on the timer ReadPacing sets. ``stop``: neither watched nor timed (a
    reload's new reader, or the final read, takes what the socket holds)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        read: Callable[[], tuple[int, bool]],
        pacing: ReadPacing | None = None,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._read = read
        self._pacing = pacing if pacing is not None else ReadPacing(loop.time())
        self._timer: asyncio.TimerHandle | None = None
        loop.add_reader(fd, self._readable)

    @property
    def timed(self) -> bool:
        """Read on the timer (not watched)."""
        return self._timer is not None

    def _readable(self) -> None:
        datagrams, more = self._read()
        pause = self._pacing.after(self._loop.time(), datagrams, more)
        if pause is not None:
            self._loop.remove_reader(self._fd)
            self._timer = self._loop.call_later(pause, self._due)

    def _due(self) -> None:
        self._timer = None
        try:
            datagrams, more = self._read()
        except BaseException:
            # Watched again, as a socket whose read raised stays watched:
            # without a timer or a watch it would never be read again.
            self._loop.add_reader(self._fd, self._readable)
            raise
        pause = self._pacing.after(self._loop.time(), datagrams, more)
        if pause is None:
            self._loop.add_reader(self._fd, self._readable)
        else:
            self._timer = self._loop.call_later(pause, self._due)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        else:
            self._loop.remove_reader(self._fd)
