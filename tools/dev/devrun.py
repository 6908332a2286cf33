"""`make run`: the daemon on development defaults, against the real emulator.

Starts the Pub/Sub emulator in the background unless PUBSUB_EMULATOR_HOST is
set, creates the topic and a subscription to look at, then runs
`ingest serve` in the foreground until Ctrl-C, and stops the emulator after.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tools.testing.emulator import Emulator

PROJECT = "ingest-dev"
TOPIC = "events"
SUBSCRIPTION = "events-tail"
RUN_DIR = ".run"
UNIX_PATH = os.path.join(RUN_DIR, "ingest.sock")
UDP = "127.0.0.1:5140"


def main() -> int:
    os.makedirs(RUN_DIR, exist_ok=True)
    emulator: Emulator | None = None
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        emulator = Emulator(log_path=os.path.join(RUN_DIR, "emulator.log")).start()
        host = emulator.host
        print(f"started the Pub/Sub emulator at {host} (log: {emulator.log_path})")
    else:
        emulator = None
    admin = emulator or Emulator(port=int(host.rpartition(":")[2]))
    topic = f"projects/{PROJECT}/topics/{TOPIC}"
    subscription = f"projects/{PROJECT}/subscriptions/{SUBSCRIPTION}"
    admin.create_topic(topic)
    admin.create_subscription(subscription, topic)
    unix_path = os.path.abspath(UNIX_PATH)
    print(
        f'\nsend events:  .venv/bin/ingest send --unix {unix_path} \'{{"hello": "world"}}\'\n'
        f'         or:  .venv/bin/ingest send --udp {UDP} \'{{"hello": "world"}}\'\n'
        f"see them:     PUBSUB_EMULATOR_HOST={host} .venv/bin/python -m tools.dev.pull {subscription}\n"
        "stop:         Ctrl-C\n",
        flush=True,
    )
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=host)
    command = [
        os.path.join(os.path.dirname(sys.executable), "ingest"),
        "serve",
        f"--project={PROJECT}",
        f"--topic={TOPIC}",
        f"--unix={unix_path}",
        f"--udp={UDP}",
    ]
    daemon = subprocess.Popen(command, env=env)
    try:
        return daemon.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the daemon too (same process group); a
        # second one from us would make it stop without draining.
        return daemon.wait()
    finally:
        if emulator is not None:
            emulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
