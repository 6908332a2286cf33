"""Dialects in a real ``ingest serve``: an incomplete chunked GELF message ends
after its five seconds."""

from __future__ import annotations

import os
import socket
import time
import zlib

from tests.helpers import PubSubNames, wait_for
from tests.integration.test_dialects import chunks
from tests.scrape import scrape, start, unaccounted, value
from tools.testing.daemon import Daemons
from tools.testing.emulator import free_port


def test_a_daemon_ends_an_incomplete_chunked_message_after_its_five_seconds(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    """The daemon's housekeeping expires chunked messages on time, with no
    further traffic: counted gelf_incomplete, their memory freed."""
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    _, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{port}")
    label = f"udp:127.0.0.1:{port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.connect(("127.0.0.1", port))
        for part in chunks(zlib.compress(os.urandom(3000)), 1000)[:-1]:
            sender.send(part)
    wait_for(
        lambda: value(scrape(base), "ingest_gelf_pending_messages", listener=label) == 1,
        10,
        "the message pending",
    )
    started = time.monotonic()
    wait_for(
        lambda: value(scrape(base), "ingest_events_rejected_total", reason="gelf_incomplete") == 1,
        10,
        "the message expired",
    )
    assert time.monotonic() - started < 9  # GELF's 5 s, housekeeping's second, and slack
    samples = scrape(base)
    assert value(samples, "ingest_gelf_pending_messages", listener=label) == 0
    assert value(samples, "ingest_gelf_pending_bytes", listener=label) == 0
    assert value(samples, "ingest_events_received_total", listener=label, format="gelf") == 1
    assert unaccounted(samples) == 0
