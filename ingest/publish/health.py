"""What publishes and probes last saw of Pub/Sub, per topic: the publishers'
own state. Publishers report each request's start and end with its topic; an
idle daemon's prober reports each topic's GetTopic result (a probe never
publishes). The rule that turns it into /healthz's verdict is
observe/health.py's ``evaluate``, which reads this state; nothing here
imports observe/.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

# A publish outstanding longer than this counts as an outage (a frozen server
# fails nothing until deadlines pass).
OUTSTANDING_LIMIT_S = 5.0
# An idle daemon probes this often, so a failure shows within 10 s.
PROBE_INTERVAL_S = 4.0
# Pub/Sub answering about a message, not about the topic: it is up.
ANSWERED = frozenset(("OK", "INVALID_ARGUMENT"))


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
