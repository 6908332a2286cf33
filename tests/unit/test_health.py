"""The health rule (ingest/observe/health.py, over ingest/publish/health.py's state) on a fake clock: pure state, no I/O."""

from __future__ import annotations

from ingest.observe.health import QUEUE_FILL_LIMIT, Verdict, evaluate
from ingest.publish.health import OUTSTANDING_LIMIT_S, PROBE_INTERVAL_S, PubSubHealth


def test_fresh_daemon_is_healthy_and_due_a_probe() -> None:
    health = PubSubHealth()
    assert evaluate(health, 0.0, 0.0).healthy
    assert health.probe_due(0.0)


def test_publish_outstanding_too_long_is_unhealthy_until_it_finishes() -> None:
    health = PubSubHealth()
    token = health.started(100.0)
    assert evaluate(health, 100.0 + OUTSTANDING_LIMIT_S - 0.1, 0.0).healthy
    verdict = evaluate(health, 100.0 + OUTSTANDING_LIMIT_S + 0.1, 0.0)
    assert not verdict.healthy
    assert "outstanding" in verdict.reasons[0]
    health.finished(token, 106.0, "OK")
    assert evaluate(health, 106.0, 0.0).healthy


def test_failing_while_events_wait_then_first_success_recovers() -> None:
    health = PubSubHealth()
    health.finished(health.started(1.0), 2.0, "UNAVAILABLE")
    verdict = evaluate(health, 2.0, 0.0)
    assert not verdict.healthy
    assert verdict.reasons == ("publishing is failing (UNAVAILABLE)",)
    health.finished(health.started(3.0), 3.5, "OK")
    assert evaluate(health, 3.5, 0.0).healthy


def test_idle_daemon_follows_its_last_probe() -> None:
    health = PubSubHealth()
    health.record(10.0, "OK")
    assert not health.probe_due(10.0 + PROBE_INTERVAL_S - 0.1)
    assert health.probe_due(10.0 + PROBE_INTERVAL_S)
    health.record(15.0, "DEADLINE_EXCEEDED")
    verdict = evaluate(health, 15.0, 0.0)
    assert not verdict.healthy
    assert "probe" in verdict.reasons[0]
    health.record(20.0, "OK")
    assert evaluate(health, 20.0, 0.0).healthy


def test_no_probe_while_a_publish_is_outstanding() -> None:
    health = PubSubHealth()
    health.started(0.0)
    assert not health.probe_due(1000.0)


def test_invalid_argument_means_pubsub_answered() -> None:
    health = PubSubHealth()
    health.finished(health.started(0.0), 0.1, "INVALID_ARGUMENT")
    assert evaluate(health, 0.1, 0.0).healthy


def test_abandoned_request_is_neither_success_nor_failure() -> None:
    health = PubSubHealth()
    health.abandon(health.started(0.0))
    assert health.oldest_outstanding_s(100.0) == 0.0
    assert not health.failing


def test_queue_nearly_full_is_unhealthy() -> None:
    health = PubSubHealth()
    assert evaluate(health, 0.0, QUEUE_FILL_LIMIT).healthy
    verdict = evaluate(health, 0.0, QUEUE_FILL_LIMIT + 0.01)
    assert not verdict.healthy
    assert "queue" in verdict.reasons[0]


def test_listener_problems_are_reasons() -> None:
    verdict = evaluate(PubSubHealth(), 0.0, 0.0, ("socket file /x is gone",))
    assert not verdict.healthy
    assert verdict.reasons == ("socket file /x is gone",)


def test_a_failing_topic_is_named_and_another_topics_successes_do_not_hide_it() -> None:
    """A dead route topic fails while --topic publishes: 503 naming it, at
    every moment, not only after its own latest attempt."""
    health = PubSubHealth()
    health.finished(health.started(1.0), 1.1, "NOT_FOUND", "gone")
    for at in (2.0, 3.0, 4.0):
        health.finished(health.started(at), at + 0.1, "OK", "main")
        verdict = evaluate(health, at + 0.1, 0.0)
        assert not verdict.healthy
        assert verdict.reasons == ("publishing to gone is failing (NOT_FOUND)",)
        assert verdict.failing_topics == ("gone",)
    health.finished(health.started(5.0), 5.1, "OK", "gone")
    assert evaluate(health, 5.1, 0.0) == Verdict(True, (), ())


def test_a_probe_success_does_not_clear_a_failed_publish() -> None:
    """GetTopic may be allowed where Publish is not (PERMISSION_DENIED): only
    a publish says publishing works; a publish also answers for the probe."""
    health = PubSubHealth()
    health.finished(health.started(1.0), 1.1, "PERMISSION_DENIED", "denied")
    health.record(2.0, "OK", "denied")
    assert evaluate(health, 2.0, 0.0).failing_topics == ("denied",)
    health.record(3.0, "UNAVAILABLE", "idle")
    verdict = evaluate(health, 3.0, 0.0)
    assert verdict.reasons == (
        "publishing to denied is failing (PERMISSION_DENIED)",
        "the Pub/Sub probe of idle is failing (UNAVAILABLE)",
    )
    assert health.failing_topics() == {"denied": "PERMISSION_DENIED", "idle": "UNAVAILABLE"}
    health.finished(health.started(4.0), 4.1, "OK", "idle")
    health.finished(health.started(4.0), 4.2, "INVALID_ARGUMENT", "denied")  # answered
    assert evaluate(health, 4.2, 0.0).healthy
    assert not health.failing


def test_the_outage_is_the_longest_failing_topics() -> None:
    health = PubSubHealth()
    health.finished(health.started(9.0), 10.0, "NOT_FOUND", "gone")
    health.finished(health.started(19.0), 20.0, "UNAVAILABLE", "main")
    health.finished(health.started(24.0), 25.0, "NOT_FOUND", "gone")  # still since 10
    assert health.outage_s(30.0) == 20.0
    health.finished(health.started(30.0), 30.5, "OK", "gone")
    assert health.outage_s(31.0) == 11.0
    health.finished(health.started(31.0), 31.5, "OK", "main")
    assert health.outage_s(32.0) == 0.0
