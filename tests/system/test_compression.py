"""--publish-compression: gzip on the wire to the real emulator (ingest/publish/pubsub.py,
the setting in ingest/config.py).

That compression is really on the wire is shown by bytes, not by a flag
being accepted: the daemon publishes through tools/testing/tcpproxy.py, whose
counters are what a link would carry, and gzip must carry well under half of
what ``none`` carries for the same events (tools/bench/compression.py
measures ~16% at 1000 events a request; the bound leaves room for the
connection's fixed costs). ``none`` must carry at least the events' own bytes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingest.cli import build_parser, settings_from
from ingest.config import SERVE_OPTIONS, ConfigError, Settings, build_settings
from ingest.publish.pubsub import PUBLISH_COMPRESSIONS, PubSubClient, RequestEncoder, create_channel
from tests.helpers import PubSubNames, UnixSender, assert_config_error, run_ingest, serve_args
from tools.bench.compression import web_events
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator
from tools.testing.tcpproxy import TcpProxy

EVENTS = 2000  # two full requests of 1000
GZIP_AT_MOST = 0.5  # of the bytes ``none`` sends for the same events
REQUIRED = {"project": "p", "topic": "events"}


def publish_through_proxy(
    daemons: Daemons,
    emulator: Emulator,
    pubsub: PubSubNames,
    sock: Path,
    events: list[bytes],
    *extra: str,
    env: dict[str, str] | None = None,
) -> int:
    """Serve through a fresh proxy, send ``events`` one per datagram, check
    they arrive byte for byte (each once), stop; the bytes sent upstream."""
    with TcpProxy(emulator.port, refuse=False) as proxy:
        daemon = daemons.start(
            *serve_args(pubsub, "--unix", str(sock), "--batch-max-messages", "1000"),
            "--batch-linger-ms", "200",  # every request full: 1000 events
            *extra,
            env=env,
            emulator_host=f"127.0.0.1:{proxy.port}",
        )  # fmt: skip
        daemon.wait_ready()
        with UnixSender(sock) as sender:
            for event in events:
                sender.send(event)
        pulled = emulator.pull_until(pubsub.subscription, len(events))
        assert sorted(pulled) == sorted(events)
        assert daemon.stop() == 0
        assert daemon.stopped_counts()["published"] == len(events)
        assert emulator.pull_quiet(pubsub.subscription, quiet_s=0.5) == []  # no duplicates
        return proxy.bytes_up


def test_gzip_arrives_byte_for_byte_and_shrinks_the_wire(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, tmp_path: Path
) -> None:
    """The flag, its environment twin and its TOML key each put gzip on the wire."""
    events = web_events(EVENTS)
    sock = sockdir / "in.sock"
    plain = publish_through_proxy(daemons, emulator, pubsub, sock, events)
    assert plain >= sum(map(len, events))  # none really is uncompressed

    config = tmp_path / "ingest.toml"
    config.write_text('publish_compression = "gzip"\n')
    for extra, env in [
        (("--publish-compression", "gzip"), None),
        ((), {"INGEST_PUBLISH_COMPRESSION": "gzip"}),
        (("--config", str(config)), None),
    ]:
        gzipped = publish_through_proxy(daemons, emulator, pubsub, sock, events, *extra, env=env)
        assert gzipped < GZIP_AT_MOST * plain, (extra, env, gzipped, plain)


def test_client_compresses_publish_only_when_asked(emulator: Emulator, pubsub: PubSubNames) -> None:
    """PubSubClient without the keyword (as a daemon not yet passing it
    builds it) sends requests as they are; with gzip, compressed."""
    request = RequestEncoder(pubsub.topic).encode(web_events(1000))

    async def publish(**kwargs: str) -> int:
        with TcpProxy(emulator.port, refuse=False) as proxy:
            client = PubSubClient(
                create_channel("unused:443", f"127.0.0.1:{proxy.port}"), pubsub.topic, **kwargs
            )
            try:
                await client.publish(request, timeout_s=30)
            finally:
                await client.close()
            return proxy.bytes_up

    plain = asyncio.run(publish())
    assert plain >= len(request)
    assert asyncio.run(publish(compression="none")) >= len(request)
    assert asyncio.run(publish(compression="gzip")) < GZIP_AT_MOST * plain
    assert len(emulator.pull_until(pubsub.subscription, 3000)) == 3000


def test_client_refuses_an_unknown_compression() -> None:
    with pytest.raises(ValueError, match="zstd"):
        PubSubClient(None, "projects/p/topics/t", compression="zstd")


# ------------------------------------------------------------------ config


def compression(env: dict[str, str] | None = None, **file: str) -> str:
    return build_settings(REQUIRED, env or {}, file).publish_compression


def test_config_accepts_exactly_the_clients_compressions() -> None:
    """config.py spells the names out (it does not import grpc); they must
    stay the ones PubSubClient knows, and the default its default."""
    for name in PUBLISH_COMPRESSIONS:
        assert compression(publish_compression=name) == name
    assert compression() == Settings("p", "events", ()).publish_compression
    assert compression() == next(iter(PUBLISH_COMPRESSIONS)) == "none"


def test_flag_env_and_toml_key() -> None:
    option = next(o for o in SERVE_OPTIONS if o.key == "publish_compression")
    assert (option.flag, option.env) == ("--publish-compression", "INGEST_PUBLISH_COMPRESSION")
    gzip_env = {"INGEST_PUBLISH_COMPRESSION": "gzip"}
    assert compression(gzip_env) == "gzip"
    assert compression(publish_compression="gzip") == "gzip"
    assert compression({"INGEST_PUBLISH_COMPRESSION": "none"}, publish_compression="gzip") == "none"
    args = build_parser().parse_args(["serve", "--publish-compression", "none"])
    flags_over_env = settings_from(
        args, {**gzip_env, "INGEST_PROJECT": "p", "INGEST_TOPIC": "events"}
    )
    assert flags_over_env.publish_compression == "none"


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_bad_value_exits_2_naming_the_flag(command: str, tmp_path: Path) -> None:
    required = ("--project", "p", "--topic", "events")
    assert_config_error(
        run_ingest(command, *required, "--publish-compression", "zstd"),
        "--publish-compression: ",
        "zstd",
    )
    config = tmp_path / "ingest.toml"
    config.write_text("publish_compression = true\n")
    assert_config_error(
        run_ingest(command, *required, "--config", str(config)),
        "--publish-compression (config key publish_compression): ",
    )


def test_bad_env_value_names_the_flag_and_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        compression({"INGEST_PUBLISH_COMPRESSION": "brotli"})
    assert str(info.value).startswith("--publish-compression (from INGEST_PUBLISH_COMPRESSION): ")
