"""A daemon's /metrics and /healthz as tests see them: GET, a scrape parsed
with prometheus_client's own parser, the accounting identity, a daemon
started with its metrics on a free port, and a slowloris."""

from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import PubSubNames
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    status, body = get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def unaccounted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    """received + recovered - (published + unconfirmed + rejected + dropped +
    queued + in flight + spooled): 0 always. ``recovered`` counts what an
    earlier run left in the spool; it is 0 without a spool."""
    return (
        total(samples, "ingest_events_received_total")
        + total(samples, "ingest_spool_recovered_events_total")
        - (
            total(samples, "ingest_events_published_total")
            + total(samples, "ingest_events_unconfirmed_total")
            + total(samples, "ingest_events_rejected_total")
            + total(samples, "ingest_events_dropped_total")
            + total(samples, "ingest_queue_events")
            + total(samples, "ingest_inflight_events")
            + total(samples, "ingest_spool_events")
        )
    )


HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # the blank line never comes


class HalfHeads:
    """A slowloris: ``count`` connections to ``port`` that each send half a
    request head and wait, kept renewed by a thread: every one the server
    closes is opened again, a round every 50 ms. ``renewed``: how many."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.renewed = 0
        self._stop = threading.Event()
        self._socks = [self._open() for _ in range(count)]
        self._thread = threading.Thread(target=self._renew, name="half-heads")

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), 5)
        sock.sendall(HALF_HEAD)
        return sock

    def _renew(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self._socks:
                selector.register(sock, selectors.EVENT_READ)
            while not self._stop.wait(0.05):
                for key, _ in selector.select(0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if sock.recv(4096):
                            continue  # an answer to half a head? never: keep it
                    except OSError:
                        pass  # reset: closed all the same
                    selector.unregister(sock)
                    sock.close()
                    self._socks.remove(sock)
                    fresh = self._open()
                    self._socks.append(fresh)
                    selector.register(fresh, selectors.EVENT_READ)
                    self.renewed += 1

    def __enter__(self) -> HalfHeads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self._socks:
            sock.close()


def timed_get(url: str, within_s: float) -> tuple[int, bytes]:
    """GET url; AssertionError unless it is answered within within_s."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=within_s) as response:
            answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        answer = exc.code, exc.read()
    except OSError as exc:  # closed unanswered, reset, timed out
        raise AssertionError(f"{url} not answered: {exc!r}") from None
    assert time.monotonic() - started <= within_s
    return answer


def start(
    daemons: Daemons, names: PubSubNames, *extra: str, emulator_host: str = ""
) -> tuple[DaemonProcess, str]:
    port = free_port()
    daemon = daemons.start(
        "--project",
        names.project,
        "--topic",
        names.topic_id,
        "--metrics",
        f"127.0.0.1:{port}",
        "--batch-linger-ms",
        "1",
        *extra,
        emulator_host=emulator_host,
    )
    daemon.wait_for_log("ready: ")
    return daemon, f"http://127.0.0.1:{port}"
