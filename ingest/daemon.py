"""The daemon's lifecycle, top to bottom: startup(), main_loop(), shutdown().

startup   check config-dependent resources (Pub/Sub topic) BEFORE binding any
          socket, bind, start publishers, start readers, log ``ready: ...``
main_loop wait for a stop signal or a crashed task
shutdown  1. stop intake: read what the kernel already queued, close sockets
          2. close the queue; publishers drain it within --drain-timeout
          3. cancel stragglers: what they held, and what is still queued, goes
             to the spool (fsynced; a key's ahead of its messages already
             there, which are newer), or without one is dropped (``shutdown``)
          4. close the channel; return the exit code

SIGHUP only starts the reload task; reloader.Reloader applies the reload to
the running pipeline. What /metrics, /healthz and the dashboard read is a
view.DaemonView, built at startup.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from google.auth.exceptions import DefaultCredentialsError

from ingest import systemd
from ingest.config import ConfigError, Settings
from ingest.flows import spool_reading
from ingest.observe.httpd import HttpServer
from ingest.observe.metrics import build_registry
from ingest.observe.tap import TapHub
from ingest.pipeline.replay import run_replay
from ingest.publish.health import PubSubHealth
from ingest.publish.pubsub import PubSubClient, create_channel, emulator_host
from ingest.publish.topic import TopicWatch
from ingest.receive import kernel
from ingest.receive.sockets import bind_listener
from ingest.receive.sources import FINAL_READ_MAX_S, DatagramSource
from ingest.reloader import Reloader
from ingest.spool import DROP_REASONS as SPOOL_DROP_REASONS
from ingest.spool import Spool
from ingest.stats import RejectSummary, Stats
from ingest.view import DaemonView
from ingest.vocabulary import Drop, Exit
from ingest.wiring import Pipeline

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 1.0


class Daemon:
    """Owns every task, socket and the channel of one ``ingest serve`` run."""

    def __init__(
        self,
        settings: Settings,
        stats: Stats | None = None,
        *,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        # What SIGHUP reads the configuration with (cli: the same flags, the
        # environment and the file again); None: reload is refused.
        self._reload_settings = reload_settings
        # The topics published to, by number (--topic's, then the routes'):
        # fixed at startup, since queued lanes and the publishers name them so.
        self.topic_ids = settings.topics
        self.topic_paths = settings.topic_paths
        self._reloading: asyncio.Task[None] | None = None
        # Made once startup has started the readers: a reload before then is refused.
        self._reloader: Reloader | None = None
        self.stats = stats or Stats()
        # Made at startup, once the spool (if any) is open (wiring.py).
        self.pipeline: Pipeline | None = None
        self.health = PubSubHealth()
        self.http: HttpServer | None = None
        self.view: DaemonView | None = None  # /metrics, /healthz, the dashboard; made at startup
        self.tap = TapHub()  # `ingest tap`, served by self.http
        self.spool: Spool | None = None
        self.topics: list[TopicWatch] = []  # --topic's first, then the routes'
        self._client: PubSubClient | None = None
        self._workers: list[asyncio.Task[None]] = []  # supervised: must not end
        self._background: list[asyncio.Task[None]] = []  # supervised; cancelled at shutdown
        self._dashboard: asyncio.Task[None] | None = None  # a UI: not supervised
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._crashed = False
        self.notifier = systemd.Notifier()  # disabled until startup reads NOTIFY_SOCKET
        self._status = systemd.RateStatus()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Serve until stopped; returns the exit code. ConfigError escapes
        from startup for the CLI to report (exit 2)."""
        loop = asyncio.get_running_loop()
        self._install_signal_handlers(loop)
        loop.set_exception_handler(self._on_loop_exception)
        try:
            await self.startup()
        except BaseException:
            await self._close_partial_startup()
            raise
        await self.main_loop()
        return await self.shutdown()

    # -------------------------------------------------------------- startup
    async def startup(self) -> None:
        settings = self.settings
        self.notifier = systemd.Notifier.from_environ()
        emulator = emulator_host()
        try:
            channel = create_channel(settings.pubsub_endpoint, emulator)
        except DefaultCredentialsError:
            raise ConfigError(
                "GOOGLE_APPLICATION_CREDENTIALS",
                "no Google credentials found; set it to a key file, or set "
                "PUBSUB_EMULATOR_HOST to use the emulator",
            ) from None
        self._client = PubSubClient(
            channel, settings.topic_path, compression=settings.publish_compression
        )
        where = f"emulator at {emulator}" if emulator else settings.pubsub_endpoint
        # One client each, on the one channel.
        for topic, path in zip(self.topic_ids, self.topic_paths, strict=True):
            client = PubSubClient(channel, path) if path != settings.topic_path else self._client
            self.topics.append(TopicWatch(client, topic, self.health, settings.create_topic, where))
        for watch in self.topics:
            await watch.check_at_startup()
        spooled = None
        if settings.spool_dir is not None:  # before binding: a locked spool is exit 2
            spooled = spool_reading(settings)
            self.spool = Spool.open(
                settings.spool_dir,
                settings.spool_max_bytes,
                settings.spool_fsync,
                self.stats,
                seen=spooled.seen if spooled else None,
            )
        pipeline = self.pipeline = Pipeline(
            settings,
            self.stats,
            self._client,
            health=self.health,
            spool=self.spool,
            spooled=spooled,
            tap=self.tap,
        )

        # After the checks: adopt what systemd passed, bind the rest.
        passed = systemd.listen_fds()
        for listener, adopted in systemd.plan_listeners(
            settings.listeners, settings.default_listeners, passed
        ):
            sock = adopted or bind_listener(
                listener,
                settings.udp_rcvbuf_bytes,
                settings.unix_mode,
                settings.unix_gid,
                unix_credentials=settings.unix_credentials,
            )
            if adopted is not None:
                sock.setblocking(False)
            pipeline.sources.append(pipeline.add_reader(listener, sock, adopted is not None))
        self._warn_unix_qlen()
        view = self.view = DaemonView(
            lambda: self.settings,
            pipeline,
            self.topic_paths,
            stats=self.stats,
            spool=self.spool,
            notifier=self.notifier,
            health=self.health,
        )
        registry = build_registry(view)
        if settings.metrics is not None:
            host, port = settings.metrics
            self.http = HttpServer(host, port, registry, view.verdict, tap=self.tap)
            try:
                await self.http.start()
            except OSError as exc:
                raise ConfigError(
                    "--metrics", f"{host}:{port}: cannot listen: {exc.strerror}"
                ) from None

        for index in range(settings.publishers):
            task = asyncio.create_task(pipeline.pool.run_worker(index), name=f"publisher-{index}")
            self._workers.append(task)
        self._background.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.spool is not None:
            replay = run_replay(
                self.spool,
                pipeline.queue,
                pipeline.replay_paused,
                pipeline.flow.admit,
            )
            self._background.append(asyncio.create_task(replay, name="spool-replay"))
        if self.notifier.watchdog_interval_s:  # WATCHDOG=1 from the loop: a stall stops it
            watchdog = asyncio.create_task(self.notifier.run_watchdog(), name="watchdog")
            self._background.append(watchdog)

        if settings.dashboard and sys.stdout.isatty():
            from ingest.observe.dashboard import InlineDashboard  # rich's Live only when asked

            dashboard = InlineDashboard(registry.collect, lambda: view.verdict().reasons)
            self._dashboard = asyncio.create_task(dashboard.run(), name="dashboard")
            self._dashboard.add_done_callback(_log_dashboard_failure)
        elif settings.dashboard:
            log.info("--dashboard: stdout is not a terminal; not drawing it")

        # Everything allocated so far (grpc, protobuf, rich, prometheus_client:
        # a few hundred thousand objects) lives as long as the process. Frozen,
        # the cyclic GC stops re-traversing it: full collections went from
        # 30-60 ms pauses -- long enough for a 4 MiB UDP buffer to overflow at
        # 150k events/s -- to ~1 ms.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for source in self.sources:
            source.start(loop)
        self._reloader = Reloader(pipeline, self.topic_ids, self._stop)
        log.info(
            "ready: %s -> %s on %s (publishers=%d%s)",
            " ".join(
                source.bound_label + (systemd.SYSTEMD_MARK if source.adopted else "")
                for source in self.sources
            ),
            " ".join(self.topic_paths),
            where,
            settings.publishers,
            f", metrics=http://{self.http.host}:{self.http.port}/metrics" if self.http else "",
        )
        self.notifier.ready()

    def _warn_unix_qlen(self) -> None:
        qlen = kernel.unix_max_dgram_qlen()
        if (
            qlen is not None
            and qlen < kernel.UNIX_QLEN_RECOMMENDED
            and any(source.kind == "unix" for source in self.sources)
        ):
            log.warning(
                "net.unix.max_dgram_qlen is %d: non-blocking same-host senders get EAGAIN "
                "(and drop events) once %d datagrams are queued. Fix: sysctl -w "
                "net.unix.max_dgram_qlen=%d (per network namespace)",
                qlen,
                qlen + 1,
                kernel.UNIX_QLEN_RECOMMENDED,
            )

    async def _housekeeping(self) -> None:
        """Once a second, off the hot path: re-create vanished unix socket
        files, clear a spool problem once the spool is writable again, tell
        systemd the rates (STATUS=), summarise rejected input (one
        line per 10 s at most), confirm the topic if startup could not, and
        probe Pub/Sub (GetTopic, never a publish) when idle."""
        loop = asyncio.get_running_loop()
        rejects = RejectSummary(self.stats)
        pipeline = self.pipeline
        assert pipeline is not None  # started by startup, once it made the pipeline
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            summary = rejects.line(loop.time())
            if summary:
                log.warning("%s", summary)
            for source in self.sources:
                source.check_path(self.settings.unix_mode, self.settings.unix_gid)
                if source.dialects is not None:  # chunked GELF messages past their time
                    source.dialects.expire(time.monotonic())
            if self.spool is not None:
                self.spool.recheck()
            if self.notifier.enabled:
                stats = self.stats
                self.notifier.status(
                    self._status.line(
                        loop.time(), stats.received_total(), stats.published, pipeline.queue.events
                    )
                )
            for watch in self.topics:
                await watch.tick()

    @property
    def sources(self) -> list[DatagramSource]:
        return self.pipeline.sources if self.pipeline else []

    # ------------------------------------------------------------ main loop
    async def main_loop(self) -> None:
        """Wait for a stop signal; a supervised task that ends first is a crash."""
        stop = asyncio.create_task(self._stop.wait(), name="stop-signal")
        supervised = [*self._workers, *self._background]
        try:
            done, _ = await asyncio.wait([stop, *supervised], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            # Whatever ended the wait, the stop has begun: no reload from here on.
            self._stop.set()
            self._abandon_reload()
        for task in supervised:
            if task in done:
                self._crashed = True
                error = None if task.cancelled() else task.exception()
                log.error("%s ended unexpectedly; shutting down", task.get_name(), exc_info=error)

    # ------------------------------------------------------------- shutdown
    async def shutdown(self) -> int:
        settings = self.settings
        self.notifier.stopping()
        # 1. Stop intake: take what the kernel already queued, then close.
        ended = [*self._background, *([self._dashboard] if self._dashboard else [])]
        for task in ended:
            task.cancel()
        await asyncio.gather(*ended, return_exceptions=True)
        deadline = time.monotonic() + FINAL_READ_MAX_S  # for all sockets together
        for source in self.sources:
            source.read_until_empty(max(0.0, deadline - time.monotonic()))
            source.close()
        # 2. Publishers drain the queue within the deadline.
        dropped_before = sum(self.stats.dropped.get(r, 0) for r in SPOOL_DROP_REASONS)
        pipeline = self.pipeline
        assert pipeline is not None  # startup made it, or raised
        pipeline.queue.close()
        log.info(
            "stopping: draining %d queued and %d in-flight events (deadline %.1fs)",
            pipeline.queue.events,
            pipeline.pool.in_flight,
            settings.drain_timeout_s,
        )
        pending = [task for task in self._workers if not task.done()]
        if pending:
            force: asyncio.Future[Any] = asyncio.create_task(self._force.wait(), name="force")
            drained: asyncio.Future[Any] = asyncio.gather(*pending, return_exceptions=True)
            await asyncio.wait(
                {force, drained},
                timeout=settings.drain_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            force.cancel()
            # 3. Cancel stragglers; each counts what it held as dropped.
            stragglers = [task for task in pending if not task.done()]
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*stragglers, return_exceptions=True)
            if stragglers:
                log.warning("cancelled %d publishers at the drain deadline", len(stragglers))
        spill = pipeline.spill_to_spool() if self.spool is not None else None
        for lane, chunk in pipeline.queued_by_lane():
            if spill is not None:
                spill(chunk.events, lane)
            else:
                self.stats.dropped[Drop.SHUTDOWN] += len(chunk.events)
        pipeline.put_back()  # what must precede messages on disk goes ahead of them
        if self.spool is not None:
            self.spool.close()  # fsync per --spool-fsync; releases the lock
        # 4. Close the channel and the HTTP endpoint, and report.
        if self._client is not None:
            await self._client.close()
        if self.http is not None:
            await self.http.close()
        self.notifier.close()  # STOPPING=1 went out at the start of the stop
        # Lost at shutdown: dropped as ``shutdown``, or refused by the spool.
        lost = (
            self.stats.dropped.get(Drop.SHUTDOWN, 0)
            + sum(self.stats.dropped.get(r, 0) for r in SPOOL_DROP_REASONS)
            - dropped_before
        )
        log.info(
            "stopped: received=%d published=%d rejected=%d dropped=%d (shutdown=%d) "
            "spooled=%d unconfirmed=%d",
            self.stats.received_total(),
            self.stats.published,
            self.stats.rejected_total(),
            self.stats.dropped_total(),
            lost,
            self.spool.events if self.spool else 0,
            self.stats.unconfirmed,
        )
        if self._crashed:
            return Exit.FAILURE
        if self._force.is_set():
            return Exit.FORCED
        # Unconfirmed events may be lost as well: not a clean stop either.
        return Exit.DRAIN_INCOMPLETE if lost or self.stats.unconfirmed else Exit.OK

    async def _close_partial_startup(self) -> None:
        for source in self.sources:
            source.close()
        if self.http is not None:
            await self.http.close()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self.pipeline is not None:
            self.pipeline.put_back()  # what cancelled publishers left
        if self.spool is not None:
            self.spool.close()

    # -------------------------------------------------------------- signals
    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, name: str) -> None:
        # Signal handlers only flip state; the main loop acts on it.
        if self._stop.is_set() and name == "SIGINT":
            log.warning("second SIGINT: stopping at once")
            self._force.set()
            return
        log.info("%s received: stopping", name)
        self._stop.set()
        self._abandon_reload()

    def _abandon_reload(self) -> None:
        """A reload asked for but not begun must not bind sockets once the
        stop has closed the others: nobody would read or remove them. One
        cannot be half done here, since a reload never awaits."""
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()
            log.warning("SIGHUP ignored: the daemon is stopping")

    def _on_hup(self) -> None:
        # Signal handlers only flip state: the reload runs as a task, one at a time.
        if self._stop.is_set():
            log.warning("SIGHUP ignored: the daemon is stopping")
            return
        if self._reloading is not None and not self._reloading.done():
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        self._reloading = asyncio.create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        """Read the configuration again and apply what a running daemon can
        (reload.py). Whatever fails, and however, is logged and counted as an
        error, and the running configuration stays as it was (``reload``)."""
        if self._stop.is_set():  # the stop began after the SIGHUP, before this task ran
            log.warning("SIGHUP ignored: the daemon is stopping")
            return
        if self._reload_settings is None:
            log.warning("SIGHUP: this daemon has no configuration to reload")
            self.stats.config_reloads["error"] += 1
            return
        try:
            changed = self._apply(self._reload_settings())
        except ConfigError as exc:  # a file that fails validation, a listener that cannot be bound
            self.stats.config_reloads["error"] += 1
            log.error("reload refused, still running the previous configuration: %s", exc)
            return
        except Exception:  # a bug, or an OSError nothing expected: the traceback says which
            self.stats.config_reloads["error"] += 1
            log.exception("reload failed, still running the previous configuration")
            return
        except BaseException as exc:  # cancelled, interrupted: undone, and not swallowed
            self.stats.config_reloads["error"] += 1
            log.error(
                "reload abandoned (%s), still running the previous configuration",
                type(exc).__name__,
            )
            raise
        self.stats.config_reloads["ok"] += 1
        log.info("reloaded: %s", ", ".join(changed) if changed else "nothing changed")

    def _apply(self, new: Settings) -> list[str]:
        """Apply ``new`` (Reloader.apply); returns the names of the settings
        that changed. Never awaits, so no stop can begin halfway."""
        # A SIGHUP during startup: its readers are not all made, or not started.
        if self._reloader is None:
            raise ConfigError("SIGHUP", "the daemon is still starting; send it again when ready")
        planned = self._reloader.apply(self.settings, new)
        self.settings = planned.settings
        return planned.changed

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An exception escaping a reader callback is a bug: say so and stop,
        # rather than leave a socket spinning on the same error.
        loop.default_exception_handler(context)
        self._crashed = True
        self._stop.set()


def _log_dashboard_failure(task: asyncio.Task[None]) -> None:
    # The dashboard is a view: if it breaks, say so and keep serving.
    if not task.cancelled() and task.exception() is not None:
        log.error("the dashboard failed; still serving", exc_info=task.exception())
