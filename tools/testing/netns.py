"""A private network namespace for a test or benchmark run: never the host's sysctls.

net.unix.max_dgram_qlen is per network namespace, so a run inside
``unshare --net`` can raise it without touching the host. There ``lo`` starts
down and 127.0.0.1 is the namespace's own loopback, so everything the run
needs (the emulator too) must start inside it. The pid namespace makes every
process of the run die with it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence

UNSHARE = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--")


def unavailable() -> str | None:
    """Why a private namespace cannot be made here, or None when it can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is not installed"
    try:
        probe = subprocess.run(
            [*UNSHARE, "true"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode:
        return f"unshare --net is not permitted here: {probe.stderr.strip()}"
    return None


def python_command(unix_qlen: int, python_args: Sequence[str]) -> list[str]:
    """``python PYTHON_ARGS`` in a fresh namespace, with ``lo`` up and
    net.unix.max_dgram_qlen set to ``unix_qlen`` there."""
    script = (
        f'ip link set lo up && sysctl -q -w net.unix.max_dgram_qlen={unix_qlen} && exec "$0" "$@"'
    )
    return [*UNSHARE, "sh", "-c", script, sys.executable, *python_args]
