"""Micro-benchmark of --unix-credentials on the unix read loop, the hot path:
µs per datagram for DatagramSource.read, with and without credentials, over
datagrams already queued in the kernel (--datagrams per run, 4000 by default,
x --runs: 200k datagrams a variant).

    .venv/bin/python -m tools.bench credentials [--runs 50] [--datagrams 4000]

Every variant decodes into PubsubMessage bodies (message.MessageBuilder), so
that the only difference is the receive: the plain recv, or recvmsg with room
for SCM_CREDENTIALS, the record's verdict looked up in the cache and the
sender's attributes handed to the builder through the wake-up. One sender process: after the first datagram every
lookup hits; the miss (a new pid, uid or gid) is timed on its own.

The datagrams go through a socketpair: one end of it is not bound by
net.unix.max_dgram_qlen (10 by default), only by the sender's send buffer,
which root raises past wmem_max. Not a test (speed never is): it prints
medians for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import socket
import statistics
import time
from collections.abc import Sequence
from typing import Any

from ingest.config import Listener
from ingest.pipeline.lanes import LaneQueue
from ingest.pipeline.message import MessageBuilder
from ingest.receive.codec import decode_messages
from ingest.receive.receivers import UCRED, Senders
from ingest.receive.sources import DatagramSource
from ingest.stats import Stats
from tools.bench.read import DATAGRAMS, PAYLOAD

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # <asm-generic/socket.h>
LISTENER = Listener("unix", path="/nonexistent/bench.sock")  # a socketpair: no file


def one_run(datagrams: int, credentials: bool, allow_uids: Sequence[int]) -> float:
    """Seconds per datagram for reading the datagrams queued in one run."""
    loop = asyncio.new_event_loop()
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    with contextlib.suppress(PermissionError):  # not root: wmem_max bounds the run
        tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 << 20)
    stats = Stats()
    builder = MessageBuilder((("env", "bench"),), (), stats.attributes_skipped)
    source = DatagramSource(
        LISTENER,
        rx,
        LaneQueue(10 * datagrams, 1 << 30, stats),
        stats,
        65535,
        decode=functools.partial(decode_messages, build=builder.build),
        credentials=credentials,
        allow_uids=allow_uids,
    )
    source._loop = loop  # what start() sets, without registering a reader
    sent = 0
    with contextlib.suppress(BlockingIOError):  # the send buffer is full
        while sent < datagrams:
            tx.send(PAYLOAD, socket.MSG_DONTWAIT)
            sent += 1
    start = time.perf_counter()
    while source.read():
        pass
    elapsed = time.perf_counter() - start
    assert stats.datagrams_received[LISTENER.label] == sent
    assert not stats.rejected, stats.rejected
    tx.close()
    rx.close()
    loop.close()
    return elapsed / sent


def learn_cost(records: int = 100_000) -> float:
    """Seconds per cache miss: Senders.learn on records never seen."""
    senders = Senders(())
    cmsgs = [
        (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(pid, 1000, 1000))
        for pid in range(1, records + 1)
    ]
    start = time.perf_counter()
    for cmsg in cmsgs:
        senders.learn(cmsg)
    return (time.perf_counter() - start) / records


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench credentials", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--datagrams", type=int, default=DATAGRAMS)
    args = parser.parse_args(argv)
    variants: list[tuple[str, bool, tuple[int, ...]]] = [
        ("no credentials (recv)", False, ()),
        ("--unix-credentials (recvmsg + cached verdict)", True, ()),
        ("--unix-allow-uid, sender allowed", True, (0, 1000, 65534, 33)),
    ]
    medians = {}
    for name, credentials, allow_uids in variants:
        one_run(args.datagrams, credentials, allow_uids)  # warm-up
        samples = [one_run(args.datagrams, credentials, allow_uids) for _ in range(args.runs)]
        medians[name] = statistics.median(samples)
        print(
            f"{name:48s} median {medians[name] * 1e6:.3f} µs/datagram "
            f"(min {min(samples) * 1e6:.3f}, {args.runs} runs x {args.datagrams} datagrams)"
        )
    plain = medians[variants[0][0]]
    for name, _, _ in variants[1:]:
        print(f"{name:48s} costs {(medians[name] - plain) * 1e6:+.3f} µs/datagram more")
    learn = learn_cost()
    print(f"{'cache miss (a new sender: Senders.learn)':48s} {learn * 1e6:.3f} µs each")
    return {
        "runs": args.runs,
        "datagrams": args.datagrams,
        "median_us_per_datagram": {name: m * 1e6 for name, m in medians.items()},
        "cache_miss_us": learn * 1e6,
    }
