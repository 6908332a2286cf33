"""Kernel facts the operator must see: UDP drops and the unix datagram queue limit.

All readers return None (or skip) where /proc does not have the file, so the
daemon runs the same on a kernel or container without them.
"""

from __future__ import annotations

import contextlib

UNIX_QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"
UNIX_QLEN_DEFAULT = 10  # the kernel's, where the sysctl cannot be read
# Below this, non-blocking same-host senders lose events to EAGAIN at load.
# Measured at 150k events/s from 4 senders (docs/guides/kernel.md): 43-60 % of
# sends failed with the default 10, up to 0.04 % with 512, none with 1024.
UNIX_QLEN_RECOMMENDED = 1024


def read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def unix_max_dgram_qlen() -> int | None:
    return read_int(UNIX_QLEN_PATH)


def udp_drops_by_inode() -> dict[int, int]:
    """{socket inode: datagrams the kernel dropped before we read them}, from
    the ``drops`` column of /proc/net/udp and /proc/net/udp6."""
    drops: dict[int, int] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(path) as fh:
            next(fh, None)  # header
            for line in fh:
                fields = line.split()
                if len(fields) >= 13:
                    with contextlib.suppress(ValueError):
                        drops[int(fields[9])] = int(fields[12])
    return drops
