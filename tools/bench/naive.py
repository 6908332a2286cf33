"""The naive alternative `make bench` compares against: google-cloud-pubsub per event.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -m tools.bench.naive TOPIC_PATH --mode futures --seconds 3

Modes (closed loop, as fast as the client allows, for ``--seconds``):

- ``futures``: ``PublisherClient.publish(topic, data)`` per event with the
  default batch settings, keeping the futures and waiting for all of them at
  the end (an asynchronous app);
- ``sync``: ``publish(topic, data).result()`` per event (a synchronous app).

Runs in its own process so its CPU time (all threads: the client batches and
sends from background threads) is its own. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from google.cloud import pubsub_v1

from tools.testing.loadgen import event_bytes

RESULT_TIMEOUT_S = 60.0


def measure(topic: str, mode: str, seconds: float) -> dict[str, object]:
    publisher = pubsub_v1.PublisherClient()
    # One publish first: channel setup is not part of the per-event cost.
    publisher.publish(topic, event_bytes(0, 0)).result(timeout=RESULT_TIMEOUT_S)
    seq = 1
    monotonic = time.monotonic
    t0 = monotonic()
    cpu0 = time.process_time()
    end = t0 + seconds
    if mode == "sync":
        while monotonic() < end:
            publisher.publish(topic, event_bytes(seq, 0)).result(timeout=RESULT_TIMEOUT_S)
            seq += 1
        issued_s = monotonic() - t0
    else:
        futures = []
        while monotonic() < end:
            futures.append(publisher.publish(topic, event_bytes(seq, 0)))
            seq += 1
        issued_s = monotonic() - t0
        for future in futures:
            future.result(timeout=RESULT_TIMEOUT_S)
    elapsed = monotonic() - t0
    cpu = time.process_time() - cpu0
    publisher.stop()
    events = seq - 1
    return {
        "mode": mode,
        "events": events,
        "issued_s": issued_s,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "events_per_s": events / elapsed,
        "cpu_us_per_event": cpu / events * 1e6,
        "latency_ms": elapsed / events * 1000 if mode == "sync" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topic", help="projects/P/topics/T")
    parser.add_argument("--mode", choices=("futures", "sync"), default="futures")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    json.dump(measure(args.topic, args.mode, args.seconds), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
