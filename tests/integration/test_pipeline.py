"""The pipeline in-process, without a daemon or a subprocess: readers on
real sockets, the queue, the batcher and the publisher pool publishing to
the real emulator (wiring.py). What the daemon adds (startup checks,
signals, shutdown order) is tested through ``ingest serve`` elsewhere."""

from __future__ import annotations

import asyncio
import socket
import zlib

import orjson

from ingest.config import Listener, Settings, build_settings
from ingest.publish.pubsub import PubSubClient, create_channel
from ingest.receive.sockets import bind_listener
from ingest.stats import Stats
from ingest.wiring import Pipeline
from tests.helpers import PubSubNames
from tools.testing.emulator import Emulator

DEADLINE_S = 20.0


def settings_for(pubsub: PubSubNames, **values: str) -> Settings:
    return build_settings(
        {"project": pubsub.project, "topic": pubsub.topic_id, "batch_linger_ms": "1", **values}, {}
    )


async def run_pipeline(settings: Settings, emulator: Emulator, datagrams: list[bytes]) -> Stats:
    """Build a pipeline on one UDP socket, send ``datagrams``, publish them
    all, close the queue and let the publishers finish."""
    stats = Stats()
    channel = create_channel(settings.pubsub_endpoint, f"127.0.0.1:{emulator.port}")
    client = PubSubClient(channel, settings.topic_path)
    pipeline = Pipeline(settings, stats, client)
    listener = Listener("udp", host="127.0.0.1", port=0)
    reader = pipeline.add_reader(listener, bind_listener(listener, 1 << 20, 0o660))
    pipeline.sources.append(reader)
    reader.start(asyncio.get_running_loop())
    workers = [asyncio.create_task(pipeline.pool.run_worker(i)) for i in range(2)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.connect(reader.sock.getsockname())
        for datagram in datagrams:
            sender.send(datagram)
    # Loopback UDP has delivered them all: read them now, as shutdown does.
    reader.read_until_empty()
    assert stats.events_received[listener.label] == len(datagrams)
    reader.close()
    pipeline.queue.close()  # the publishers finish what is queued, then return
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*workers)
    await client.close()
    return stats


def test_a_plain_pipeline_publishes_every_format_in_process(
    emulator: Emulator, pubsub: PubSubNames
) -> None:
    events = [b'{"n":%d}' % n for n in range(50)]
    datagrams = [
        *events,
        zlib.compress(b'{"short_message":"gelf"}'),
        b'<13>app: {"via":"syslog"}',
        b"a.hits:1|c",
        b"not json",
    ]
    stats = asyncio.run(run_pipeline(settings_for(pubsub), emulator, datagrams))
    assert stats.published == len(datagrams) - 1 and stats.rejected_total() == 1
    messages = emulator.pull_messages_until(pubsub.subscription, len(datagrams) - 1)
    by_data = {m.data: dict(m.attributes) for m in messages}
    assert set(events) <= set(by_data)
    assert by_data[b'{"via":"syslog"}']["syslog_app"] == "app"
    assert orjson.loads(next(d for d in by_data if b"metric" in d)) == {
        "metric": "a.hits",
        "value": 1,
        "type": "c",
    }


def test_a_metadata_pipeline_publishes_attributes_in_process(
    emulator: Emulator, pubsub: PubSubNames
) -> None:
    settings = settings_for(pubsub, attributes=["env=test"], attribute_fields=["kind=kind"])
    datagrams = [b'{"kind":"k%d"}' % (n % 3) for n in range(30)]
    stats = asyncio.run(run_pipeline(settings, emulator, datagrams))
    assert stats.published == 30
    messages = emulator.pull_messages_until(pubsub.subscription, 30)
    for message in messages:
        kind = orjson.loads(message.data)["kind"]
        assert dict(message.attributes) == {"env": "test", "kind": kind}
