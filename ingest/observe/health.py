"""Is Pub/Sub accepting? The health rule, as state plus one pure evaluation.

Publishers report each request's start and end; an idle daemon's prober
reports GetTopic results (a probe never publishes). ``evaluate`` applies:

- a publish outstanding for more than OUTSTANDING_LIMIT_S             -> unhealthy
- the latest publish or probe failed (while events wait, or idle)     -> unhealthy
- the queue above QUEUE_FILL_LIMIT of either bound                    -> unhealthy
- a listener problem (a unix socket file gone)                        -> unhealthy
- otherwise                                                           -> healthy
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

OUTSTANDING_LIMIT_S = 5.0
QUEUE_FILL_LIMIT = 0.9
# An idle daemon probes this often, so a failure shows within 10 s.
PROBE_INTERVAL_S = 4.0


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]


class PubSubHealth:
    """What publishers and the prober last saw. Loop-thread only; no locks."""

    def __init__(self) -> None:
        self._outstanding: dict[int, float] = {}
        self._ids = itertools.count()
        self.last_ok_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_failure_code = ""
        self.last_activity_at: float | None = None  # any finished publish or probe
        self.failing_since: float | None = None  # the first failure after the last success

    def started(self, now: float) -> int:
        token = next(self._ids)
        self._outstanding[token] = now
        return token

    def finished(self, token: int, now: float, code: str) -> None:
        self._outstanding.pop(token, None)
        self.record(now, code)

    def abandon(self, token: int) -> None:
        """A request cancelled at shutdown: neither success nor failure."""
        self._outstanding.pop(token, None)

    def record(self, now: float, code: str) -> None:
        """A finished publish or probe; ``code`` is the gRPC code name."""
        self.last_activity_at = now
        # INVALID_ARGUMENT is Pub/Sub answering about a message: it is up.
        if code in ("OK", "INVALID_ARGUMENT"):
            self.last_ok_at = now
            self.failing_since = None
        else:
            if self.failing_since is None:
                self.failing_since = now
            self.last_failure_at = now
            self.last_failure_code = code

    def oldest_outstanding_s(self, now: float) -> float:
        if not self._outstanding:
            return 0.0
        return now - min(self._outstanding.values())

    def outage_s(self, now: float) -> float:
        """How long Pub/Sub has not been accepting: since the first failure
        after the last success, or since the oldest request outstanding past
        OUTSTANDING_LIMIT_S (a frozen server fails nothing until deadlines
        pass); 0 when healthy."""
        outage = now - self.failing_since if self.failing_since is not None else 0.0
        outstanding = self.oldest_outstanding_s(now)
        if outstanding > OUTSTANDING_LIMIT_S:
            outage = max(outage, outstanding)
        return outage

    @property
    def failing(self) -> bool:
        if self.last_failure_at is None:
            return False
        return self.last_ok_at is None or self.last_failure_at > self.last_ok_at

    def probe_due(self, now: float) -> bool:
        """Idle and nothing finished lately: a GetTopic should confirm."""
        if self._outstanding:
            return False
        return self.last_activity_at is None or now - self.last_activity_at >= PROBE_INTERVAL_S


def evaluate(
    health: PubSubHealth,
    now: float,
    events_waiting: int,
    queue_fill: float,
    listener_problems: tuple[str, ...] = (),
) -> Verdict:
    reasons = list(listener_problems)
    outstanding = health.oldest_outstanding_s(now)
    if outstanding > OUTSTANDING_LIMIT_S:
        reasons.append(f"a publish has been outstanding for {outstanding:.1f}s")
    if health.failing:
        what = "publishing" if events_waiting else "the Pub/Sub probe"
        reasons.append(f"{what} is failing ({health.last_failure_code})")
    if queue_fill > QUEUE_FILL_LIMIT:
        reasons.append(f"queue {queue_fill:.0%} full")
    return Verdict(not reasons, tuple(reasons))
