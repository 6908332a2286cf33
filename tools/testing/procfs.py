"""/proc readers for `make bench`: CPU time, peak RSS, machine-wide busy time."""

from __future__ import annotations

import os
import re

HZ = os.sysconf("SC_CLK_TCK")


def read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int | str) -> list[str] | None:
    text = read_text(f"/proc/{pid}/stat")
    # The command name may hold spaces and parentheses: split after the last ")".
    return text.rpartition(")")[2].split() if text else None


def process_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / HZ if fields else 0.0


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every live process in a process group (the emulator's)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields and int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / HZ
    return total


def machine_cpu_s() -> tuple[float, float]:
    """(busy, of which irq + softirq): CPU seconds of all cores since boot.

    Interrupt time is charged to no process: loopback UDP is delivered in
    softirq (~2 µs a datagram here), so it must be counted apart."""
    first = (read_text("/proc/stat") or "cpu").split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = [int(x) for x in first] + [0] * (
        8 - len(first)
    )
    return (user + nice + system + irq + softirq + steal) / HZ, (irq + softirq) / HZ


def peak_rss_kib(pid: int) -> int | None:
    match = re.search(r"VmHWM:\s+(\d+) kB", read_text(f"/proc/{pid}/status") or "")
    return int(match.group(1)) if match else None
