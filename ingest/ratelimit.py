"""Rate-limited logging: one line per key per interval, with a count of the rest."""

from __future__ import annotations

import logging
import time


class LogLimiter:
    """``limiter.log(logger, key, level, msg, *args)`` emits at most one line per
    ``interval_s`` per key and reports how many were suppressed meanwhile."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, logger: logging.Logger, key: str, level: int, msg: str, *args: object) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            logger.log(level, "%s (%d similar suppressed)", msg % args, suppressed)
        else:
            logger.log(level, msg, *args)
        return True
