"""Print what a subscription holds: `python -m tools.dev.pull projects/P/subscriptions/S`.

For looking at the emulator by hand (PUBSUB_EMULATOR_HOST must be set).
"""

from __future__ import annotations

import os
import sys
import time

from tools.testing.emulator import Emulator


def main() -> int:
    if len(sys.argv) != 2 or "PUBSUB_EMULATOR_HOST" not in os.environ:
        print(
            "usage: PUBSUB_EMULATOR_HOST=HOST:PORT python -m tools.dev.pull SUBSCRIPTION",
            file=sys.stderr,
        )
        return 2
    admin = Emulator(port=int(os.environ["PUBSUB_EMULATOR_HOST"].rpartition(":")[2]))
    try:
        while True:
            messages = admin.pull(sys.argv[1])
            for data in messages:
                print(data.decode(errors="replace"), flush=True)
            if not messages:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
