"""The topic and Pub/Sub's reachability, outside the publish path.

At startup: the topic must exist (or is created with --create-topic); an
unreachable Pub/Sub is not an error — a host booting during an outage must
still accept its events — so the check is repeated later until it answers.
While idle: a GetTopic probe (never a publish) keeps the health rule informed.
Every answer is recorded in the shared PubSubHealth.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import grpc.aio

from ingest.config import ConfigError
from ingest.publish.health import PubSubHealth
from ingest.publish.pubsub import PubSubClient

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


class TopicWatch:
    def __init__(
        self, client: PubSubClient, topic_id: str, health: PubSubHealth, create: bool, where: str
    ) -> None:
        self._client = client
        self._topic_id = topic_id  # the client's topic: what health records name
        self._health = health
        self._create = create
        self._where = where  # "emulator at HOST:PORT" or the endpoint, for messages
        self.confirmed = False
        self.last_details = ""  # the server's words with the last failed GetTopic

    async def _get_topic(self) -> grpc.StatusCode:
        """One GetTopic; its code, recorded for the health rule."""
        loop = asyncio.get_running_loop()
        try:
            await self._client.get_topic(PROBE_TIMEOUT_S)
            code, self.last_details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, self.last_details = exc.code(), exc.details() or ""
        self._health.record(loop.time(), code.name, self._topic_id)
        return code

    async def check_at_startup(self) -> None:
        """Raises ConfigError for a missing topic without --create-topic."""
        code = await self._get_topic()
        if code is grpc.StatusCode.OK:
            self.confirmed = True
        elif code is grpc.StatusCode.NOT_FOUND:
            if not self._create:
                raise ConfigError(
                    "--topic",
                    f"{self._client.topic_path} does not exist on {self._where} "
                    "(create it, or pass --create-topic)",
                )
            await self._create_topic()
            self.confirmed = True
        else:
            log.warning(
                "Pub/Sub (%s) not usable at startup: %s %s; accepting events and retrying",
                self._where,
                code.name,
                self.last_details,
            )

    async def tick(self) -> None:
        """Housekeeping: confirm the topic if startup could not; probe if idle."""
        if not self.confirmed:
            await self._confirm()
        elif self._health.probe_due(asyncio.get_running_loop().time()):
            await self._get_topic()

    async def _confirm(self) -> None:
        code = await self._get_topic()
        if code is grpc.StatusCode.NOT_FOUND and self._create:
            try:
                await self._create_topic()
            except grpc.aio.AioRpcError:
                return  # next tick
        elif code is grpc.StatusCode.NOT_FOUND:
            log.error(
                "topic %s does not exist on %s; events are kept and retried "
                "(create it, or restart with --create-topic)",
                self._client.topic_path,
                self._where,
            )
        elif code is not grpc.StatusCode.OK:
            return  # still unreachable: next tick
        else:
            log.info(
                "Pub/Sub (%s) reachable; topic %s exists", self._where, self._client.topic_path
            )
        self.confirmed = True  # said once; publishers keep retrying whatever it is

    async def _create_topic(self) -> None:
        try:
            await self._client.create_topic(PROBE_TIMEOUT_S)
            log.info("created topic %s", self._client.topic_path)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
