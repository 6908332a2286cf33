"""The spool seen from a second process: its lock refuses another spool on the
directory, and its cursor is on disk after each hand-off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.unit.test_spool import open_spool, replay_all


def test_a_second_spool_on_the_directory_is_refused(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    # flock is per open file description: a second process must be refused.
    code = (
        "import sys;from ingest.spool import Spool;from ingest.stats import Stats\n"
        "from ingest.config import ConfigError\n"
        f"try: Spool.open({str(tmp_path)!r}, 1<<20, 'roll', Stats())\n"
        "except ConfigError as e: print(e); sys.exit(2)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2
    assert f"--spool-dir: {tmp_path} is in use by another ingest (pid {os.getpid()})" in out.stdout
    spool.close()


def test_the_cursor_is_on_disk_after_each_hand_off(tmp_path: Path) -> None:
    # SIGKILL right after two partial hand-offs: no close(), no fsync.
    code = (
        "import os, signal\nfrom ingest.spool import Spool\nfrom ingest.stats import Stats\n"
        f"s = Spool.open({str(tmp_path)!r}, 1 << 20, 'never', Stats())\n"
        "s.append([b'%d' % i for i in range(10)])\n"
        "s.peek(); s.consume(3); s.peek(); s.consume(2)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert out.returncode == -signal.SIGKILL
    again, _ = open_spool(tmp_path)
    assert replay_all(again) == [b"%d" % i for i in range(5, 10)]
    again.close()
