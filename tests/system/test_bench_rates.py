"""The bench's rates suite at a tiny rate (its rows well formed, every event
accounted), and the stand-in's answer delay it relies on."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from ingest.publish.pubsub import RequestEncoder
from tools.bench import rates
from tools.testing.fakepubsub import FakePubSub
from tools.testing.loadgen import event_bytes

TOPIC = "projects/p/topics/t"
DELAY_MS = 300.0


def test_the_suite_returns_a_row_per_step_with_every_event_delivered() -> None:
    quick = ["--rates", "400", "--duration", "0.5", "--idle-seconds", "0.3", "--quiet-wait-s", "0"]
    figures = rates.run(["--no-emulator", *quick])
    assert figures["ok"] is True
    rows = figures["rows"]
    steps = {(r["publisher"], r["mode"], r["rate"]) for r in rows}
    assert steps == {
        ("ingest", "plain", 0),
        ("ingest", "plain", 400),
        ("python", "plain", 400),
        ("ingest", "keys", 0),
        ("ingest", "keys", 400),
        ("python", "keys", 400),
    }
    for row in rows:
        assert row["target"] == "standin"
        assert row["cores"] >= 0
        if row["rate"]:
            assert row["offered"] == 200
            assert row["delivered"] == row["offered"], row
            assert row["duplicates"] == row["foreign"] == 0, row
            assert row["latency_p50_ms"] is not None
            assert row["requests_per_s"] > 0
            assert row["cpu_us_per_event"] > 0
            if row["publisher"] == "ingest":  # its own account, from its stopped: line
                assert (row["received"], row["counted_away"]) == (row["offered"], 0), row
    assert figures["answer_delay_ms"] == rates.ANSWER_DELAY_MS


@pytest.mark.parametrize("engine", ["c", "python"])
def test_the_stand_in_holds_publish_answers_and_answers_the_rest_meanwhile(
    tmp_path: Path, engine: str
) -> None:
    fake = FakePubSub(str(tmp_path / "fake.log"))
    fake.start(engine, answer_delay_ms=DELAY_MS)
    try:
        with grpc.insecure_channel(fake.host) as channel:
            publish = channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
            get_topic = channel.unary_unary("/google.pubsub.v1.Publisher/GetTopic")
            request = RequestEncoder(TOPIC).encode([event_bytes(0, 0)])
            started = time.monotonic()
            held = publish.future(request, timeout=30)
            # The probe (same connection) is answered while the Publish is held.
            assert get_topic(b"\x0a\x01t", timeout=30) == b"\x0a\x01t"
            assert not held.done()
            assert held.result(timeout=30)
            assert time.monotonic() - started >= DELAY_MS / 1000
        assert fake.report(0, 0)["requests"] == 1
    finally:
        fake.stop()
