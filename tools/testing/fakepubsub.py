"""A FAKE Pub/Sub Publish server, for `make bench` only: the cheapest stand-in we can make.

    python -m tools.testing.fakepubsub --port 8681
    PUBSUB_EMULATOR_HOST=127.0.0.1:8681 ingest serve ...

Why it exists: on a 2-core machine the real emulator's own CPU (5-12 µs a
message, more than the daemon's) dominates a local run, so events queue
behind it and the daemon starves. In production Pub/Sub is remote and costs
the daemon's host nothing. Against this stand-in a run shows the daemon's own
ceiling; the emulator run of the bench stays the one that proves delivery
through the real thing. This is not a Pub/Sub implementation: it stores
nothing and serves nobody but the bench.

It answers, over insecure gRPC (what PUBSUB_EMULATOR_HOST selects in
ingest/publish/pubsub.py), the calls the daemon makes (ingest/publish/pubsub.py,
ingest/publish/topic.py) and one of its own:

- ``Publisher/Publish``: a PublishResponse with one message ID per message
  (IDs "0".."n-1", unique within a request only: ingest never reads them);
  every message is checked as a tools/testing/loadgen.py event: byte for byte what
  was sent for its sequence number, distinct/duplicate/foreign counted as
  tools/testing/verify.py does, latency from its send stamp to the request's arrival;
- ``Publisher/GetTopic`` (the daemon's startup check and idle probe) and
  ``Publisher/CreateTopic`` (``--create-topic``): every topic exists. The
  request is echoed: GetTopicRequest.topic and Topic.name are both field 1,
  a string, so the bytes are a Topic named as asked;
- ``ingest.bench.FakePublisher/Report``, JSON ``{"first_seq": F,
  "expected": E}``: the counts since the last report (then reset), and from
  now on E sequence numbers from F are checked. For the bench's metadata run
  it also names what the messages must carry (tools/testing/verify.py's Metadata):
  ``"keys": N`` (events sent with ``tools.testing.loadgen --keys N``), ``"attributes":
  "k=v,k=v"``, ``"route_topic"`` and ``"routed"`` (the user whose events go
  to that topic ID); each distinct event's ordering key, attributes and topic
  are then checked (``wrong_metadata``), and those on the route's topic
  counted (``routed``). Any topic is accepted. ``"format": "gelf"`` or
  ``"statsd"`` (events sent with ``tools.testing.loadgen --format``) checks each
  message as the event ingest publishes for that format instead (the
  sequence number from GELF's ``_seq``, from the statsd event's ``value``;
  a statsd event has no send time, so no latency).

Two implementations, one protocol. tools/native/fakepubsub.c (built with the
machine's C compiler on first use, as tools/native/loadgen.c is) speaks just enough
HTTP/2 itself and checks every message inline; ~0.05 µs a message. Without a
compiler, this module's grpcio server (a generic handler, raw bytes in and
out, the request parsed by protobuf's C parser for its message count) serves
instead: ~0.6 ms of CPU a request, ~0.8 µs a message, in thread switches
(~14 a request on our 2-core VMs); it keeps each request's bytes and checks
them at the next Report, off the clock, up to ``--keep-max-bytes`` (the
report counts the rest as unchecked). ``--engine python`` forces it.

``--strict`` (the python engine only) refuses what the real service refuses
and the emulator accepts, with the real service's status codes
(cloud.google.com/pubsub/quotas, "Resource limits"): a request over
10,000,000 bytes, with no message or more than 1,000 (INVALID_ARGUMENT);
messages with different ordering keys in one request (FAILED_PRECONDITION);
a message with neither data nor attributes, more than 100 attributes, an
attribute key over 256 bytes or starting with ``goog``, a value over 1,024
bytes, an ordering key over 1,024 bytes (INVALID_ARGUMENT). Tests run the
daemon against it so that those rules are checked by something other than
ingest's own code; the Report counts what it refused (``refused``: reason ->
requests) and the messages taken per topic (``topics``).

``--answer-delay-ms N`` (both engines) holds each Publish answer until N ms
after its request arrived, as a nearby region's round trip would: what a
publisher that waits for answers (one request in flight per ordering key)
makes of a remote service. The latency the report gives stays send ->
arrival here. The python engine holds a handler thread per held answer, so
its ``--workers`` bound the requests in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.pubsub_v1.types import pubsub as pubsub_types

from tools.native import cbuild
from tools.testing.emulator import free_port, stop_process_group
from tools.testing.loadgen import event_bytes, parse_event
from tools.testing.verify import Metadata

C_SOURCE = cbuild.source("fakepubsub.c")
_PublishRequest = pubsub_types.PublishRequest.pb()
PUBLISHER = "google.pubsub.v1.Publisher"
REPORT_SERVICE = "ingest.bench.FakePublisher"
REPORT_METHOD = f"/{REPORT_SERVICE}/Report"
MAX_MESSAGE_BYTES = 16 << 20  # above Pub/Sub's 10 MB request limit, as ingest's channel
# The real service's limits (cloud.google.com/pubsub/quotas), which --strict applies.
REAL_MAX_REQUEST_BYTES = 10_000_000
REAL_MAX_REQUEST_MESSAGES = 1000
REAL_MAX_ATTRIBUTES = 100
REAL_MAX_ATTRIBUTE_KEY_BYTES = 256
REAL_MAX_ATTRIBUTE_VALUE_BYTES = 1024
REAL_MAX_ORDERING_KEY_BYTES = 1024
REAL_RESERVED_PREFIX = "goog"


class Refusal(StrEnum):
    """Why --strict refused a Publish request (the real service refuses it too)."""

    REQUEST_TOO_LARGE = "request_too_large"
    NO_MESSAGES = "no_messages"
    TOO_MANY_MESSAGES = "too_many_messages"
    MIXED_ORDERING_KEYS = "mixed_ordering_keys"
    EMPTY_MESSAGE = "empty_message"
    TOO_MANY_ATTRIBUTES = "too_many_attributes"
    ATTRIBUTE_KEY_TOO_LONG = "attribute_key_too_long"
    RESERVED_ATTRIBUTE_KEY = "reserved_attribute_key"
    ATTRIBUTE_VALUE_TOO_LONG = "attribute_value_too_long"
    ORDERING_KEY_TOO_LONG = "ordering_key_too_long"


# The status the real service answers each refusal with.
REFUSAL_STATUS = {reason: grpc.StatusCode.INVALID_ARGUMENT for reason in Refusal} | {
    Refusal.MIXED_ORDERING_KEYS: grpc.StatusCode.FAILED_PRECONDITION
}


def refusal(request_bytes: int, parsed: Any) -> tuple[Refusal, str] | None:
    """What the real service says of a PublishRequest (``parsed``, of
    ``request_bytes`` bytes) that it refuses, or None when it takes it."""
    messages = parsed.messages
    if request_bytes > REAL_MAX_REQUEST_BYTES:
        return Refusal.REQUEST_TOO_LARGE, (
            f"Request payload size exceeds the limit: {REAL_MAX_REQUEST_BYTES} bytes."
        )
    if not messages:
        return Refusal.NO_MESSAGES, "The value for message_count is too small: 0."
    if len(messages) > REAL_MAX_REQUEST_MESSAGES:
        return Refusal.TOO_MANY_MESSAGES, (
            f"The value for message_count is too large: {len(messages)} > "
            f"{REAL_MAX_REQUEST_MESSAGES}."
        )
    if len({m.ordering_key for m in messages}) > 1:
        return Refusal.MIXED_ORDERING_KEYS, (
            "In a single publish request, all messages must have no ordering key or they "
            "must all have the same ordering key."
        )
    for m in messages:
        if not m.data and not m.attributes:
            return Refusal.EMPTY_MESSAGE, "Some messages are empty: no data and no attributes."
        if len(m.attributes) > REAL_MAX_ATTRIBUTES:
            return Refusal.TOO_MANY_ATTRIBUTES, (
                f"A message has {len(m.attributes)} attributes; the maximum is "
                f"{REAL_MAX_ATTRIBUTES}."
            )
        for key, value in m.attributes.items():
            if len(key.encode()) > REAL_MAX_ATTRIBUTE_KEY_BYTES:
                return Refusal.ATTRIBUTE_KEY_TOO_LONG, (
                    f"An attribute key is longer than {REAL_MAX_ATTRIBUTE_KEY_BYTES} bytes."
                )
            if key.startswith(REAL_RESERVED_PREFIX):
                return Refusal.RESERVED_ATTRIBUTE_KEY, (
                    f"Attribute keys starting with {REAL_RESERVED_PREFIX!r} are reserved."
                )
            if len(value.encode()) > REAL_MAX_ATTRIBUTE_VALUE_BYTES:
                return Refusal.ATTRIBUTE_VALUE_TOO_LONG, (
                    f"An attribute value is longer than {REAL_MAX_ATTRIBUTE_VALUE_BYTES} bytes."
                )
        if len(m.ordering_key.encode()) > REAL_MAX_ORDERING_KEY_BYTES:
            return Refusal.ORDERING_KEY_TOO_LONG, (
                f"An ordering key is longer than {REAL_MAX_ORDERING_KEY_BYTES} bytes."
            )
    return None


LATENCY_QUANTILES = 1000  # the report's latency quantiles, in 0.1 % steps


@dataclass
class Ledger:
    """What arrived since the last report. Publish handlers append under a lock."""

    keep_max_bytes: int
    strict: bool = False  # refuse what the real service refuses (see the top)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    messages: int = 0
    kept_bytes: int = 0
    unchecked: int = 0  # messages beyond keep_max_bytes: counted only
    kept: list[tuple[int, bytes, int]] = field(default_factory=list)  # (arrival µs, request, n)
    probes: int = 0  # GetTopic / CreateTopic calls
    first_seq: int = 0  # the range of sequence numbers checked (set by a report)
    expected: int = 0
    metadata: Metadata | None = None  # and what their messages carry (set by a report)
    route_topic: str = ""  # the topic ID the metadata's ``routed`` user goes to
    fmt: str = "json"  # tools.testing.loadgen --format of the events (set by a report)
    refused: Counter[str] = field(default_factory=Counter)  # --strict: requests, by Refusal
    topics: Counter[str] = field(default_factory=Counter)  # messages taken, by topic
    _ids: dict[int, bytes] = field(default_factory=dict)

    def response(self, count: int) -> bytes:
        """PublishResponse.message_ids (field 1): one ID per message, cached by count."""
        ids = self._ids.get(count)
        if ids is None:
            ids = self._ids[count] = b"".join(  # tag, length (< 128: one byte), ID
                b"\x0a" + bytes((len(str(i)),)) + str(i).encode() for i in range(count)
            )
        return ids

    def publish(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # Wall clock on purpose: compared with the senders' wall-clock stamps.
        arrived_us = time.time_ns() // 1000
        try:
            parsed = _PublishRequest.FromString(request)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a PublishRequest")
        count = len(parsed.messages)
        refused = refusal(len(request), parsed) if self.strict else None
        if refused is not None:
            reason, detail = refused
            with self.lock:
                self.refused[reason] += 1
            context.abort(REFUSAL_STATUS[reason], detail)
        with self.lock:
            self.requests += 1
            self.messages += count
            self.topics[parsed.topic] += count
            if self.kept_bytes + len(request) <= self.keep_max_bytes:
                self.kept.append((arrived_us, request, count))
                self.kept_bytes += len(request)
            else:
                self.unchecked += count
        return self.response(count)

    def probe(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.probes += 1
        return request

    def report(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Counts since the last report (then reset), checked against the range
        the last report set; the request's JSON sets the next range."""
        ask = json.loads(request or b"{}")
        with self.lock:
            kept, self.kept = self.kept, []
            checked = (self.first_seq, self.expected, self.metadata, self.route_topic)
            fmt = self.fmt
            self.first_seq = int(ask.get("first_seq", 0))
            self.expected = int(ask.get("expected", 0))
            self.metadata, self.route_topic = metadata_of(ask)
            self.fmt = str(ask.get("format", "json"))
            out: dict[str, Any] = {
                "requests": self.requests,
                "messages": self.messages,
                "unchecked": self.unchecked,
                "probes": self.probes,
                "refused": dict(self.refused),
                "topics": dict(self.topics),
            }
            self.requests = self.messages = self.kept_bytes = self.unchecked = self.probes = 0
            self.refused.clear()
            self.topics.clear()
        out.update(check(kept, *checked, fmt=fmt))
        return json.dumps(out).encode()


def metadata_of(ask: dict[str, Any]) -> tuple[Metadata | None, str]:
    """A Report's expectations of the metadata run (see the top), if any."""
    keys = int(ask.get("keys", 0))
    if keys <= 0:
        return None, ""
    pairs = [pair.partition("=") for pair in str(ask.get("attributes", "")).split(",") if pair]
    attributes = tuple((key, value) for key, _, value in pairs)
    return Metadata(keys, attributes, str(ask.get("routed", ""))), str(ask.get("route_topic", ""))


def check(
    kept: list[tuple[int, bytes, int]],
    first_seq: int,
    expected: int,
    metadata: Metadata | None = None,
    route_topic: str = "",
    *,
    fmt: str = "json",
) -> dict[str, Any]:
    """Distinct, duplicate and foreign events in the kept requests (as
    tools/testing/verify.py counts them: every message byte for byte as published for
    ``fmt``, and with ``metadata`` its attributes, ordering key and topic),
    and the latency (send -> arrival here) quantiles of the distinct ones
    that carry a send time."""
    started = time.process_time()
    seen = bytearray(expected)
    latencies: list[int] = []
    append = latencies.append
    distinct = duplicates = foreign = wrong = routed = 0
    keys = metadata.keys if metadata else 0
    last_us = 0
    for arrived_us, request, _ in kept:
        last_us = max(last_us, arrived_us)
        parsed = _PublishRequest.FromString(request)
        topic = int(parsed.topic.rpartition("/")[2] == route_topic)
        for message in parsed.messages:
            data = message.data
            try:
                seq, sent_us = parse_event(data, fmt)
            except ValueError:
                foreign += 1
                continue
            index = seq - first_seq
            if not 0 <= index < expected or data != event_bytes(seq, sent_us, keys, fmt):
                foreign += 1
            elif seen[index]:
                duplicates += 1
            else:
                seen[index] = 1
                distinct += 1
                if sent_us is not None:
                    append(arrived_us - sent_us)
                if metadata is not None:
                    routed += topic
                    wrong += metadata.wrong(seq, message.attributes, message.ordering_key, topic)
    latencies.sort()
    quantiles = []
    if latencies:
        last = len(latencies) - 1
        quantiles = [
            latencies[min(last, i * len(latencies) // LATENCY_QUANTILES)]
            for i in range(LATENCY_QUANTILES)
        ] + [latencies[last]]
    return {
        "distinct": distinct,
        "duplicates": duplicates,
        "foreign": foreign,
        "last_us": last_us,
        "metadata_checked": metadata is not None,
        "wrong_metadata": wrong,
        "routed": routed,
        "latency_quantiles_us": quantiles,
        "check_cpu_s": time.process_time() - started,
    }


def held(
    publish: Callable[[bytes, grpc.ServicerContext], bytes], delay_s: float
) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """``publish`` answering ``delay_s`` after the request arrived (--answer-delay-ms)."""

    def answer_later(request: bytes, context: grpc.ServicerContext) -> bytes:
        due = time.monotonic() + delay_s
        response = publish(request, context)
        time.sleep(max(0.0, due - time.monotonic()))
        return response

    return answer_later


def serve(
    port: int,
    keep_max_bytes: int,
    workers: int,
    *,
    strict: bool = False,
    answer_delay_s: float = 0.0,
) -> grpc.Server:
    ledger = Ledger(keep_max_bytes, strict=strict)
    publish = held(ledger.publish, answer_delay_s) if answer_delay_s > 0 else ledger.publish
    raw = grpc.unary_unary_rpc_method_handler  # no serializers: bytes in, bytes out
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.http2.max_frame_size", 1 << 20),
        ],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PUBLISHER,
                {
                    "Publish": raw(publish),
                    "GetTopic": raw(ledger.probe),
                    "CreateTopic": raw(ledger.probe),
                },
            ),
            grpc.method_handlers_generic_handler(REPORT_SERVICE, {"Report": raw(ledger.report)}),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    server.start()
    return server


def c_server() -> str | None:
    """Path of the compiled C server (built once per source version), or None."""
    return cbuild.build(C_SOURCE, "fakepubsub", "-pthread")


class FakePubSub:
    """The stand-in as a child process in its own process group (so that the
    bench can nice it and count its CPU like the emulator's), and its Report."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine = ""  # "C" or "python (grpcio)", once started
        self._channel: grpc.Channel | None = None

    def start(
        self,
        engine: str = "c",
        timeout_s: float = 30.0,
        *,
        strict: bool = False,
        answer_delay_ms: float = 0.0,
    ) -> FakePubSub:
        """Start it; ``strict`` (the python engine: the C one does not check
        requests) refuses what the real service refuses; ``answer_delay_ms``
        holds each Publish answer that long after its request arrived."""
        binary = c_server() if engine == "c" and not strict else None
        command = [sys.executable, "-m", "tools.testing.fakepubsub", "--engine=python"]
        command += ["--strict"] if strict else []
        if binary is not None:
            command = [binary]
        if answer_delay_ms > 0:
            command.append(f"--answer-delay-ms={answer_delay_ms:g}")
        self.engine = "C" if binary else "python (grpcio)" + (", strict" if strict else "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*command, f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._channel = grpc.insecure_channel(self.host)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(
                f"fake Pub/Sub not ready after {timeout_s}s; see {self.log_path}"
            ) from None
        return self

    def report(
        self,
        first_seq: int,
        expected: int,
        metadata: Metadata | None = None,
        route_topic: str = "",
        *,
        timeout_s: float = 300.0,
        fmt: str = "json",
    ) -> dict[str, Any]:
        """Counts since the last report (then reset); the sequence numbers
        checked from now on: ``expected`` of them from ``first_seq``, sent as
        ``tools.testing.loadgen --format fmt``, and with ``metadata`` what their
        messages carry (``route_topic``: the ID of the topic its ``routed``
        user's events go to)."""
        assert self._channel is not None
        call = self._channel.unary_unary(REPORT_METHOD)
        fields: dict[str, Any] = {"first_seq": first_seq, "expected": expected}
        if fmt != "json":
            fields["format"] = fmt
        if metadata is not None:
            fields["keys"] = metadata.keys
            fields["attributes"] = ",".join(f"{k}={v}" for k, v in metadata.attributes)
            fields["route_topic"] = route_topic
            fields["routed"] = metadata.routed
        ask = json.dumps(fields).encode()
        result: dict[str, Any] = json.loads(call(ask, timeout=timeout_s))
        return result

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            stop_process_group(self.proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.testing.fakepubsub", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--keep-max-bytes",
        type=int,
        default=2 << 30,
        help="python engine: request bytes kept for the sequence check between reports",
    )
    parser.add_argument("--workers", type=int, default=4, help="python engine: handler threads")
    parser.add_argument("--engine", choices=("c", "python"), default="c")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse what the real service refuses (python engine; implies --engine python)",
    )
    parser.add_argument(
        "--answer-delay-ms",
        type=float,
        default=0.0,
        help="answer each Publish this long after its request arrived (a remote region)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    binary = c_server() if args.engine == "c" and not args.strict else None
    if binary is not None:
        delay = [f"--answer-delay-ms={args.answer_delay_ms:g}"] if args.answer_delay_ms > 0 else []
        os.execv(binary, [binary, f"--port={args.port}", *delay])
    server = serve(
        args.port,
        args.keep_max_bytes,
        args.workers,
        strict=args.strict,
        answer_delay_s=args.answer_delay_ms / 1000,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    mode = ", strict" if args.strict else ""
    print(f"fake Pub/Sub (python{mode}) ready on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.stop(1).wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
