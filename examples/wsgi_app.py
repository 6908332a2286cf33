"""A small WSGI app that records one event per request, two ways.

    gunicorn -w 4 --preload --chdir examples wsgi_app:app

``INGEST_EXAMPLE_MODE`` picks how the event leaves the request:

- ``emit`` (default): through ``ingest_client.Emitter`` to the local
  ``ingest serve`` — one non-blocking datagram, a few µs; the request never
  waits on Pub/Sub. The Emitter is module-level, created at import: under
  ``--preload`` that is in gunicorn's master, and each worker gets a socket of
  its own after fork (the Emitter detects the fork).
- ``direct``: ``google.cloud.pubsub_v1.PublisherClient.publish(...).result()``
  — publish and wait for the message ID, as an app that needs to know it was
  published would. The client is created lazily in each worker: a gRPC
  channel must not cross a fork.

Settings (environment): ``INGEST_EXAMPLE_UNIX`` (socket path) or
``INGEST_EXAMPLE_UDP`` (HOST:PORT) for ``emit``; ``INGEST_EXAMPLE_TOPIC``
(projects/P/topics/T) and optionally ``INGEST_EXAMPLE_MAX_LATENCY_S`` (the
client's batch max_latency; its default is 0.01 s) for ``direct``.
``PUBSUB_EMULATOR_HOST`` points the direct client at the emulator.

Routes: ``/`` and anything else records ``{"event": "request", "request_id",
"path", "method", "pid"}`` — the request id is the ``X-Request-Id`` header
when given, so a caller can find its event — and answers 200 with the id; the
``X-Ingest-Sent`` response header says whether the Emitter handed the event to
the kernel (``1``) or dropped and counted it (``0``; exact under the sync
worker, which serves one request at a time), and ``X-Record-Us`` what
recording the event took inside the handler. ``/_stats`` answers this
worker's ``Emitter.stats()`` as JSON.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ingest_client import Emitter

MODE = os.environ.get("INGEST_EXAMPLE_MODE", "emit")
if MODE not in ("emit", "direct"):
    raise SystemExit(f"INGEST_EXAMPLE_MODE must be emit or direct, not {MODE!r}")
TOPIC = os.environ.get("INGEST_EXAMPLE_TOPIC", "")
PUBLISH_TIMEOUT_S = 30.0

# Module-level, created at import (in the master under --preload). The deploy
# marker connects it before the fork, which is exactly the case fork safety is
# for: the workers must not share this socket.
emitter = (
    Emitter(udp=os.environ["INGEST_EXAMPLE_UDP"])
    if os.environ.get("INGEST_EXAMPLE_UDP")
    else Emitter(unix=os.environ.get("INGEST_EXAMPLE_UNIX") or None)
)
if MODE == "emit":
    emitter.emit({"event": "app_started", "pid": os.getpid()})

_publisher: Any = None
_publisher_pid = 0
_publisher_lock = threading.Lock()


def _publisher_client() -> Any:
    """One PublisherClient per worker process, made after the fork."""
    global _publisher, _publisher_pid  # noqa: PLW0603 - a per-process singleton, by design
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            from google.cloud import pubsub_v1  # only the direct mode pays for it

            latency = os.environ.get("INGEST_EXAMPLE_MAX_LATENCY_S")
            batch = pubsub_v1.types.BatchSettings(max_latency=float(latency)) if latency else ()
            _publisher = pubsub_v1.PublisherClient(batch_settings=batch)
            _publisher_pid = os.getpid()
        return _publisher


def _json(obj: dict[str, Any]) -> bytes:
    # The standard library's json, so the emit mode needs only the light
    # client (pip install ./clients/python) and gunicorn.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/_stats":
        body = _json({"pid": os.getpid(), **emitter.stats()})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    request_id = environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex
    event = _json(
        {
            "event": "request",
            "request_id": request_id,
            "path": path,
            "method": environ.get("REQUEST_METHOD", "GET"),
            "pid": os.getpid(),
        }
    )
    headers = [("Content-Type", "text/plain")]
    if MODE == "direct":
        t0 = time.perf_counter()
        # The app learns that Pub/Sub has the message, and pays for it here.
        _publisher_client().publish(TOPIC, event).result(timeout=PUBLISH_TIMEOUT_S)
        spent_s = time.perf_counter() - t0
    else:
        before = emitter.stats()["sent"]
        t0 = time.perf_counter()
        emitter.emit(event)
        spent_s = time.perf_counter() - t0
        headers.append(("X-Ingest-Sent", "1" if emitter.stats()["sent"] > before else "0"))
    # What recording the event cost this request, for tools/bench/gunicorn.py.
    headers.append(("X-Record-Us", f"{spent_s * 1e6:.1f}"))
    start_response("200 OK", headers)
    return [request_id.encode()]
