"""Is Pub/Sub accepting? The health rule, as state plus one pure evaluation.

Publishers report each request's start and end, with its topic; an idle
daemon's prober reports each topic's GetTopic result (a probe never
publishes). ``evaluate`` applies:

- a publish outstanding for more than OUTSTANDING_LIMIT_S             -> unhealthy
- a topic whose latest publish failed, until a publish to it succeeds -> unhealthy
- a topic whose latest probe failed, until a probe or publish succeeds -> unhealthy
- the queue above QUEUE_FILL_LIMIT of either bound                    -> unhealthy
- a listener problem (a unix socket file gone)                        -> unhealthy
- otherwise                                                           -> healthy

Per topic, so one failing topic is named, and another topic's successes
cannot hide it: a dead route topic keeps /healthz at 503 while --topic
publishes. A probe's success does not clear a failed publish: GetTopic may be
allowed where Publish is not (PERMISSION_DENIED), and only a publish says
that publishing works.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

OUTSTANDING_LIMIT_S = 5.0
QUEUE_FILL_LIMIT = 0.9
# An idle daemon probes this often, so a failure shows within 10 s.
PROBE_INTERVAL_S = 4.0
# Pub/Sub answering about a message, not about the topic: it is up.
ANSWERED = frozenset(("OK", "INVALID_ARGUMENT"))


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]
    # The topic IDs ``reasons`` name as failing (PubSubHealth.failing_topics).
    failing_topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """A topic's failing publishes or probes: the latest code, and since when."""

    code: str
    since: float


class PubSubHealth:
    """What publishers and the prober last saw, per topic ID. Loop-thread
    only; no locks. The topic is "" where a caller does not name one."""

    def __init__(self) -> None:
        self._outstanding: dict[int, float] = {}
        self._ids = itertools.count()
        self.last_activity_at: float | None = None  # any finished publish or probe
        # Topic ID -> its failure, while it lasts; a topic absent is fine.
        self.publish_failures: dict[str, Failure] = {}
        self.probe_failures: dict[str, Failure] = {}

    def started(self, now: float) -> int:
        token = next(self._ids)
        self._outstanding[token] = now
        return token

    def finished(self, token: int, now: float, code: str, topic: str = "") -> None:
        """A publish to ``topic`` ended with ``code`` (a gRPC code name)."""
        self._outstanding.pop(token, None)
        self.last_activity_at = now
        if code in ANSWERED:
            self.publish_failures.pop(topic, None)
            self.probe_failures.pop(topic, None)  # publishing works: so does the topic
        else:
            _note(self.publish_failures, topic, code, now)

    def abandon(self, token: int) -> None:
        """A request cancelled at shutdown: neither success nor failure."""
        self._outstanding.pop(token, None)

    def record(self, now: float, code: str, topic: str = "") -> None:
        """A finished probe (GetTopic) of ``topic``; ``code`` is the gRPC code name."""
        self.last_activity_at = now
        if code in ANSWERED:
            self.probe_failures.pop(topic, None)
        else:
            _note(self.probe_failures, topic, code, now)

    def oldest_outstanding_s(self, now: float) -> float:
        if not self._outstanding:
            return 0.0
        return now - min(self._outstanding.values())

    def outage_s(self, now: float) -> float:
        """How long Pub/Sub has not been accepting: since the first failure
        of the topic failing longest, or since the oldest request outstanding
        past OUTSTANDING_LIMIT_S (a frozen server fails nothing until
        deadlines pass); 0 when healthy."""
        since = [f.since for f in (*self.publish_failures.values(), *self.probe_failures.values())]
        outage = now - min(since) if since else 0.0
        outstanding = self.oldest_outstanding_s(now)
        if outstanding > OUTSTANDING_LIMIT_S:
            outage = max(outage, outstanding)
        return outage

    @property
    def failing(self) -> bool:
        """Some topic's latest publish or probe failed."""
        return bool(self.publish_failures or self.probe_failures)

    def failing_topics(self) -> dict[str, str]:
        """Topic ID -> the code it fails with: its publishes', else its probes'."""
        out = {topic: f.code for topic, f in self.publish_failures.items()}
        for topic, f in self.probe_failures.items():
            out.setdefault(topic, f.code)
        return out

    def probe_due(self, now: float) -> bool:
        """Idle and nothing finished lately: a GetTopic should confirm."""
        if self._outstanding:
            return False
        return self.last_activity_at is None or now - self.last_activity_at >= PROBE_INTERVAL_S


def _note(failures: dict[str, Failure], topic: str, code: str, now: float) -> None:
    """A failure of ``topic``: its code now, its start kept."""
    failure = failures.get(topic)
    failures[topic] = Failure(code, failure.since if failure is not None else now)


def evaluate(
    health: PubSubHealth,
    now: float,
    queue_fill: float,
    listener_problems: tuple[str, ...] = (),
) -> Verdict:
    reasons = list(listener_problems)
    outstanding = health.oldest_outstanding_s(now)
    if outstanding > OUTSTANDING_LIMIT_S:
        reasons.append(f"a publish has been outstanding for {outstanding:.1f}s")
    for topic, failure in health.publish_failures.items():
        where = f" to {topic}" if topic else ""
        reasons.append(f"publishing{where} is failing ({failure.code})")
    for topic, failure in health.probe_failures.items():
        if topic not in health.publish_failures:
            where = f" of {topic}" if topic else ""
            reasons.append(f"the Pub/Sub probe{where} is failing ({failure.code})")
    if queue_fill > QUEUE_FILL_LIMIT:
        reasons.append(f"queue {queue_fill:.0%} full")
    failing = tuple(t for t in health.failing_topics() if t)
    return Verdict(not reasons, tuple(reasons), failing)
