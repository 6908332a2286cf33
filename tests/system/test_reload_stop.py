"""A reload and a stop, and a reload that fails: once a stop has begun,
SIGHUP is ignored (said in the log) and binds nothing; a reload that fails,
whatever it raises, is logged, counted as an error and undone -- what it
bound is closed and its socket files removed -- and the daemon runs on with
its previous configuration.

The daemon runs as ``ingest serve`` where a signal can show it. The failures
a real reload cannot easily be made to hit at a chosen point (descriptors
running out on the second bind, a bug in building a reader or the pipeline's
new bounds, a cancellation) are injected by monkeypatching, in-process: a
Daemon started on the emulator within the test's own event loop."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ingest import reloader as reloader_module
from ingest.config import ConfigError, Settings, build_settings
from ingest.daemon import Daemon
from ingest.observe.httpd import HttpServer
from ingest.pipeline.lanes import LaneBatcher
from ingest.wiring import Pipeline
from tests.helpers import PubSubNames, UnixSender, closed_tcp_port, send_unix
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator

DEADLINE_S = 10.0


# --- through a signal -------------------------------------------------------------------


def test_sighup_during_the_shutdown_drain_is_ignored_and_binds_nothing(
    daemons: Daemons, pubsub: PubSubNames, tmp_path: Path, sockdir: Path
) -> None:
    """The reported case: SIGTERM, Pub/Sub unreachable so the drain waits,
    then a SIGHUP with a file that adds a listener."""
    main, extra = sockdir / "main.sock", sockdir / "extra.sock"
    config = tmp_path / "ingest.toml"
    head = (
        f'project = "{pubsub.project}"\ntopic = "{pubsub.topic_id}"\nmetrics = ""\n'
        "drain_timeout = 600\n"
    )
    config.write_text(head + f'unix = ["{main}"]\n')
    daemon = daemons.start("--config", str(config), emulator_host=f"127.0.0.1:{closed_tcp_port()}")
    daemon.wait_ready()
    send_unix(main, b'{"stuck":true}')
    daemon.wait_for_log("publish failed with UNAVAILABLE")
    daemon.send_signal(signal.SIGTERM)
    daemon.wait_for_log("stopping: draining")
    config.write_text(head + f'unix = ["{main}", "{extra}"]\n')
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log("SIGHUP ignored: the daemon is stopping")
    assert not extra.exists()
    assert "listener added" not in daemon.log and "reloaded" not in daemon.log
    daemon.send_signal(signal.SIGINT)  # the drain would wait 600 s for Pub/Sub
    assert daemon.wait(DEADLINE_S) == 130
    assert not extra.exists() and not main.exists()


# --- in-process -------------------------------------------------------------------------


class Config:
    """What the daemon's SIGHUP reads: ``settings``, or ``error`` raised."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.error: BaseException | None = None

    def read(self) -> Settings:
        if self.error is not None:
            raise self.error
        return self.settings


def serve_settings(pubsub: PubSubNames, *unix: Path, **values: Any) -> Settings:
    return build_settings(
        {
            "project": pubsub.project,
            "topic": pubsub.topic_id,
            "metrics": "",
            "batch_linger_ms": "1",
            "unix": [str(path) for path in unix],
            "attributes": ["v=1"],  # the metadata pipeline: a reload changes its builder
            **values,
        },
        {},
    )


@asynccontextmanager
async def running(settings: Settings, config: Config) -> AsyncIterator[Daemon]:
    """A started daemon on this loop (no signal handlers: the test calls
    them), stopped and shut down at the end."""
    root = logging.getLogger()
    level = root.level  # a reload sets the root logger's level
    daemon = Daemon(settings, reload_settings=config.read)
    await daemon.startup()
    try:
        yield daemon
    finally:
        daemon._on_stop_signal("SIGTERM")
        await daemon.shutdown()
        gc.unfreeze()  # startup froze the test process's objects
        root.setLevel(level)


async def hup(daemon: Daemon) -> asyncio.Task[None] | None:
    """SIGHUP, as the handler would; the reload task, once it has ended."""
    daemon._on_hup()
    task = daemon._reloading
    if task is not None:
        await asyncio.wait([task], timeout=DEADLINE_S)
        assert task.done()
    return task


async def reads(daemon: Daemon, path: Path) -> None:
    """A datagram to ``path`` is read: the reader there is running."""
    label = f"unix:{path}"
    before = daemon.stats.events_received[label]
    with UnixSender(path) as sender:
        sender.send(b'{"still":"read"}')
    async with asyncio.timeout(DEADLINE_S):
        # A counter, no event to wait on: polled, within the deadline.
        while daemon.stats.events_received[label] == before:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _emulator_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    for name in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(name, raising=False)


def failing_after(calls: int, error: BaseException, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that call number ``calls`` (from 1) raises ``error``."""
    count = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == calls:
            raise error
        return real(*args, **kwargs)

    return call


# Where a reload fails, and with what. The reload adds two listeners and
# changes the mode of the existing socket, the attributes and a queue bound,
# so that each point has something before it to undo.
FAULTS: dict[str, tuple[str, BaseException]] = {
    "reading the file: not a ConfigError": ("settings", KeyError("surprise")),
    "the second bind: out of descriptors": (
        "bind",
        OSError(errno.EMFILE, "Too many open files"),
    ),
    "the pipeline's new bounds, half set: a bug": ("reconfigure", ValueError("bad bound")),
    "a new reader: a bug": ("add_reader", RuntimeError("bad reader")),
    "a new reader: cancelled": ("add_reader", asyncio.CancelledError()),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_reload_that_fails_anywhere_is_logged_counted_and_undone(
    fault: str,
    pubsub: PubSubNames,
    sockdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    where, error = FAULTS[fault]
    main, one, two = sockdir / "main.sock", sockdir / "one.sock", sockdir / "two.sock"
    old = serve_settings(pubsub, main)
    new = serve_settings(
        pubsub, main, one, two, attributes=["v=2"], queue_max_events="7", unix_mode="0600"
    )
    config = Config(new)

    def inject() -> None:  # once started: counting the reload's calls only
        if where == "settings":
            config.error = error
        elif where == "bind":  # the second added listener's
            real = reloader_module.bind_listener
            monkeypatch.setattr(reloader_module, "bind_listener", failing_after(2, error, real))
        elif where == "reconfigure":  # after the queue's bounds, before the batcher's
            real = LaneBatcher.set_bounds
            monkeypatch.setattr(LaneBatcher, "set_bounds", failing_after(1, error, real))
        else:  # after main's new reader, the first added listener's
            real = Pipeline.add_reader
            monkeypatch.setattr(Pipeline, "add_reader", failing_after(2, error, real))

    async def scenario() -> None:
        async with running(old, config) as daemon:
            sources = list(daemon.sources)
            inject()
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="ingest"):
                task = await hup(daemon)
            assert task is not None
            assert task.cancelled() == isinstance(error, asyncio.CancelledError)
            assert not one.exists() and not two.exists()  # closed and unlinked
            assert dict(daemon.stats.config_reloads) == {"error": 1}
            failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(failures) == 1, caplog.text
            assert "still running the previous configuration" in failures[0].getMessage()
            if isinstance(error, Exception):  # unexpected: with its traceback
                assert failures[0].exc_info is not None and failures[0].exc_info[1] is error
            else:
                assert "CancelledError" in failures[0].getMessage()
            assert "reloaded" not in caplog.text
            # Still the previous configuration, still reading.
            assert daemon.settings is old
            assert daemon.sources == sources
            assert daemon.view.queue.max_events == old.queue_max_events
            assert stat.S_IMODE(main.stat().st_mode) == old.unix_mode
            await reads(daemon, main)
            # And the next reload, with nothing failing, is applied.
            monkeypatch.undo()
            config.error = None
            with caplog.at_level(logging.INFO, logger="ingest"):
                await hup(daemon)
            assert "reloaded: listeners, queue_max_events, unix_mode, attributes" in caplog.text
            assert dict(daemon.stats.config_reloads) == {"error": 1, "ok": 1}
            assert daemon.view.queue.max_events == 7
            assert stat.S_IMODE(main.stat().st_mode) == 0o600
            await reads(daemon, one)
            await reads(daemon, two)
        assert not one.exists() and not two.exists() and not main.exists()

    asyncio.run(scenario())


def test_a_listener_that_cannot_be_bound_undoes_the_ones_bound_before_it(
    pubsub: PubSubNames, sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ConfigError a real bind raises: a directory that does not exist."""
    main, one = sockdir / "main.sock", sockdir / "one.sock"
    missing = sockdir / "no-such-dir" / "two.sock"
    old = serve_settings(pubsub, main)
    config = Config(serve_settings(pubsub, main, one, missing))

    async def scenario() -> None:
        async with running(old, config) as daemon:
            with caplog.at_level(logging.INFO, logger="ingest"):
                await hup(daemon)
            assert not one.exists()
            assert dict(daemon.stats.config_reloads) == {"error": 1}
            assert (
                f"reload refused, still running the previous configuration: --unix: {missing}: "
                f"directory {missing.parent} does not exist"
            ) in caplog.text
            assert daemon.settings is old
            await reads(daemon, main)

    asyncio.run(scenario())


# How a stop begins while a SIGHUP's reload task waits to run: a signal, or
# something that ends the main loop without one (a crashed task, an exception
# escaping a reader callback sets the stop directly).
STOPS: dict[str, Callable[[Daemon], None]] = {
    "SIGTERM": lambda daemon: daemon._on_stop_signal("SIGTERM"),
    "SIGINT": lambda daemon: daemon._on_stop_signal("SIGINT"),
    "set directly": lambda daemon: daemon._stop.set(),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_reload_asked_for_before_a_stop_does_not_run_after_it(
    stop: str, pubsub: PubSubNames, sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main, extra = sockdir / "main.sock", sockdir / "extra.sock"
    config = Config(serve_settings(pubsub, main, extra))

    async def scenario() -> None:
        async with running(serve_settings(pubsub, main), config) as daemon:
            with caplog.at_level(logging.INFO, logger="ingest"):
                daemon._on_hup()  # the task is created, not yet run
                STOPS[stop](daemon)
                task = daemon._reloading
                assert task is not None
                await asyncio.wait([task], timeout=DEADLINE_S)
            assert not extra.exists()
            assert "SIGHUP ignored: the daemon is stopping" in caplog.text
            assert "reloaded" not in caplog.text and "listener added" not in caplog.text
            assert len(daemon.sources) == 1
        assert not extra.exists()

    asyncio.run(scenario())


def test_sighup_once_stopping_creates_no_reload(
    pubsub: PubSubNames, sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main, extra = sockdir / "main.sock", sockdir / "extra.sock"
    config = Config(serve_settings(pubsub, main, extra))

    async def scenario() -> None:
        async with running(serve_settings(pubsub, main), config) as daemon:
            daemon._on_stop_signal("SIGTERM")
            with caplog.at_level(logging.INFO, logger="ingest"):
                assert await hup(daemon) is None
            assert "SIGHUP ignored: the daemon is stopping" in caplog.text
            assert not extra.exists()
            # The reloader itself refuses too, for a caller that is not the handler.
            assert daemon._reloader is not None
            with pytest.raises(ConfigError, match="the daemon is stopping"):
                daemon._reloader.apply(daemon.settings, config.settings)
            assert not extra.exists()

    asyncio.run(scenario())


def test_a_sighup_during_startup_is_refused_until_ready(
    pubsub: PubSubNames,
    sockdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Startup awaits the HTTP endpoint after making the pipeline and
    binding the sockets, before the publishers and readers start: a reload
    then would rebuild readers startup has not started yet."""
    main, extra = sockdir / "main.sock", sockdir / "extra.sock"
    config = Config(serve_settings(pubsub, main, extra))
    holder: list[Daemon] = []
    real_start = HttpServer.start

    async def start(server: HttpServer) -> None:
        holder[0]._on_hup()
        await asyncio.sleep(0)  # the reload task runs here, mid-startup
        await real_start(server)

    monkeypatch.setattr(HttpServer, "start", start)

    async def scenario() -> None:
        daemon = Daemon(
            serve_settings(pubsub, main, metrics="127.0.0.1:0"), reload_settings=config.read
        )
        holder.append(daemon)
        with caplog.at_level(logging.INFO, logger="ingest"):
            await daemon.startup()
        try:
            assert daemon._reloading is not None and daemon._reloading.done()
            assert not extra.exists()
            assert dict(daemon.stats.config_reloads) == {"error": 1}
            assert "the daemon is still starting; send it again when ready" in caplog.text
            await reads(daemon, main)
        finally:
            daemon._on_stop_signal("SIGTERM")
            await daemon.shutdown()
            gc.unfreeze()

    asyncio.run(scenario())
