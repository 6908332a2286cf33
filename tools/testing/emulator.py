"""The real Google Pub/Sub emulator, for tests, `make run` and `make bench`.

Starts the Java launcher directly (faster than `gcloud beta emulators`) in its
own process group and stops the whole group: killing only a wrapper would
leave the Java server running. Also small raw-gRPC admin helpers: topics,
subscriptions, and a Pull loop (the emulator hands out at most 100 messages a
Pull; raw Pull is twice as fast as the streaming subscriber).

Pull fast by pulling and acking strictly in turn, from one caller per
subscription. While any message of a subscription is outstanding (pulled, not
acked), every Pull re-copies its whole backlog (MessageBacklog
.updateExpiredAckDeadlines), so concurrent pullers or pulling without acking
turn quadratic: 600k backlog took 327 s with 32 concurrent pullers, and 12 s
(50k msgs/s) with one pull-then-ack loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as t

_Topic = t.Topic.pb()
_Subscription = t.Subscription.pb()
_PullRequest = t.PullRequest.pb()
_PullResponse = t.PullResponse.pb()
_AckRequest = t.AcknowledgeRequest.pb()


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child started in its own session (and whatever it spawned:
    killing only a wrapper leaves the server running), SIGKILL after 10 s. A
    frozen group is thawed first: a stopped process cannot exit."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def launcher_path() -> str | None:
    """Path of cloud-pubsub-emulator, or None when it is not installed."""
    candidates = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            root = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
            if root:
                candidates.append(
                    os.path.join(root, "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
                )
    candidates.append(
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    )
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port(family: socket.AddressFamily = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as sock:
        sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        return int(sock.getsockname()[1])


class Emulator:
    """One emulator process on 127.0.0.1:port. Use as a context manager."""

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = log_path or os.path.join(
            tempfile.gettempdir(), f"pubsub-emulator-{self.port}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def start(self, timeout_s: float = 60.0) -> Emulator:
        launcher = launcher_path()
        if launcher is None:
            raise RuntimeError("the Pub/Sub emulator is not installed")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [launcher, "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, stopped as one
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"emulator exited with {self.proc.returncode}; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                if self._ready():
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"emulator not ready after {timeout_s}s; see {self.log_path}")

    def _ready(self) -> bool:
        try:
            self.get_topic("projects/ready-probe/topics/none")
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return True

    def signal(self, signum: int) -> None:
        """Signal the whole process group (SIGSTOP freezes it, SIGCONT thaws)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            stop_process_group(self.proc)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ admin RPCs
    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.host, options=[("grpc.max_receive_message_length", 64 << 20)]
            )
        return self._channel

    def _call(
        self, method: str, request: object, response_type: type, timeout: float = 30.0
    ) -> object:
        rpc = self.channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=timeout)

    def get_topic(self, topic: str) -> object:
        return self._call(
            "/google.pubsub.v1.Publisher/GetTopic", t.GetTopicRequest.pb()(topic=topic), _Topic, 5
        )

    def create_topic(self, topic: str) -> None:
        """Create ``projects/P/topics/T``; an existing one is fine."""
        try:
            self._call("/google.pubsub.v1.Publisher/CreateTopic", _Topic(name=topic), _Topic)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def delete_topic(self, topic: str) -> None:
        """Delete it; its subscriptions stay, detached (``_deleted-topic_``),
        so a topic created again under the name needs new ones."""
        self._call(
            "/google.pubsub.v1.Publisher/DeleteTopic",
            t.DeleteTopicRequest.pb()(topic=topic),
            empty_pb2.Empty,
        )

    def create_subscription(self, subscription: str, topic: str, *, ordered: bool = False) -> None:
        """Create the subscription BEFORE publishing: a message published to a
        topic without subscriptions is gone. ``ordered``: messages of one
        ordering key are delivered in the order Pub/Sub received them."""
        try:
            self._call(
                "/google.pubsub.v1.Subscriber/CreateSubscription",
                _Subscription(
                    name=subscription,
                    topic=topic,
                    ack_deadline_seconds=600,
                    enable_message_ordering=ordered,
                ),
                _Subscription,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def delete_subscription(self, subscription: str) -> None:
        """Delete it (and the messages it holds); a missing one is fine."""
        try:
            self._call(
                "/google.pubsub.v1.Subscriber/DeleteSubscription",
                t.DeleteSubscriptionRequest.pb()(subscription=subscription),
                empty_pb2.Empty,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def pull(self, subscription: str, max_messages: int = 100, ack: bool = True) -> list[bytes]:
        """One immediate Pull; returns message data (acked unless ack=False)."""
        return [m.data for m in self.pull_messages(subscription, max_messages, ack)]

    def pull_messages(
        self, subscription: str, max_messages: int = 100, ack: bool = True
    ) -> list[Any]:
        """One immediate Pull; the PubsubMessages (attributes, ordering key)."""
        response = self._call(
            "/google.pubsub.v1.Subscriber/Pull",
            _PullRequest(
                subscription=subscription, max_messages=max_messages, return_immediately=True
            ),
            _PullResponse,
        )
        received = list(response.received_messages)  # type: ignore[attr-defined]
        if received and ack:
            self._call(
                "/google.pubsub.v1.Subscriber/Acknowledge",
                _AckRequest(subscription=subscription, ack_ids=[m.ack_id for m in received]),
                empty_pb2.Empty,
            )
        return [m.message for m in received]

    def pull_messages_until(
        self, subscription: str, count: int, timeout_s: float = 30.0
    ) -> list[Any]:
        """Pull until ``count`` messages arrived or the deadline passes."""
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            batch = self.pull_messages(subscription)
            out.extend(batch)
            if not batch:
                time.sleep(0.05)
        return out

    def pull_until(self, subscription: str, count: int, timeout_s: float = 30.0) -> list[bytes]:
        """Pull until ``count`` messages arrived or the deadline passes."""
        return [m.data for m in self.pull_messages_until(subscription, count, timeout_s)]

    def pull_quiet(
        self, subscription: str, quiet_s: float = 1.0, timeout_s: float = 30.0
    ) -> list[bytes]:
        """Pull until nothing more arrives for ``quiet_s`` (to prove absence)."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = self.pull(subscription)
            if batch:
                out.extend(batch)
                last = time.monotonic()
            elif time.monotonic() - last >= quiet_s:
                break
            else:
                time.sleep(0.05)
        return out


def names(project: str, topic: str, subscription: str) -> tuple[str, str]:
    return f"projects/{project}/topics/{topic}", f"projects/{project}/subscriptions/{subscription}"


@contextlib.contextmanager
def running_emulator() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator
