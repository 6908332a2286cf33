"""Is Pub/Sub accepting? The health rule: one pure evaluation of the state
publishes and probes record (publish/health.py, the publishers' own state).

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

from dataclasses import dataclass

from ingest.publish.health import OUTSTANDING_LIMIT_S, PubSubHealth

QUEUE_FILL_LIMIT = 0.9


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]
    # The topic IDs ``reasons`` name as failing (PubSubHealth.failing_topics).
    failing_topics: tuple[str, ...] = ()


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
