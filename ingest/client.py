"""``ingest.client``: the light client's Emitter and its names, re-exported.

    from ingest.client import Emitter        # as before; new code:
    from ingest_client import Emitter

The Emitter lives in ``clients/python/ingest_client`` (the ``ingest-client``
distribution, standard library only); the daemon's distribution ships that
same source package. This module re-exports what ``ingest_client.emitter``
exports (its ``__all__``; clients/python/tests/test_client_package.py holds
this list to it): the same objects, not copies. The emitter's module state (the live
Emitters, the fork and exit hooks, the clock and pid it reads) stays in
``ingest_client.emitter``: patch it there.
"""

from __future__ import annotations

from ingest_client.emitter import (
    BAD_ADDRESS,
    CLOSED,
    DEFAULT_MAX_DATAGRAM_BYTES,
    DEFAULT_UNIX_PATH,
    DISCONNECTED,
    HOST_NAME_MAX_BYTES,
    JSON_LIBRARY,
    NO_SOCKET,
    NOT_CONNECTED,
    NOT_OBJECT,
    OTHER,
    PERMISSION_DENIED,
    QUEUE_FULL,
    REENTRANT,
    REFUSED,
    TOO_LARGE,
    UNIX_PATH_MAX_BYTES,
    UNSERIALIZABLE,
    Emitter,
)

__all__ = [
    "BAD_ADDRESS",
    "CLOSED",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_UNIX_PATH",
    "DISCONNECTED",
    "HOST_NAME_MAX_BYTES",
    "JSON_LIBRARY",
    "NOT_CONNECTED",
    "NOT_OBJECT",
    "NO_SOCKET",
    "OTHER",
    "PERMISSION_DENIED",
    "QUEUE_FULL",
    "REENTRANT",
    "REFUSED",
    "TOO_LARGE",
    "UNIX_PATH_MAX_BYTES",
    "UNSERIALIZABLE",
    "Emitter",
]
