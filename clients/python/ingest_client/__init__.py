"""ingest-client: send JSON events to a local ``ingest serve``, fire and forget.

    from ingest_client import Emitter
    events = Emitter(unix="/run/ingest/ingest.sock")   # or Emitter(udp="127.0.0.1:5140")
    events.emit({"event": "signup", "user": 42})        # never raises, never blocks

Standard library only; orjson when installed (``ingest-client[fast]``). The
daemon ships this same package and re-exports it as ``ingest.client``.
"""

from ingest_client.address import (
    DEFAULT_UNIX_PATH,
    HOST_NAME_MAX_BYTES,
    UNIX_PATH_MAX_BYTES,
    check_unix_path,
    parse_host_port,
)
from ingest_client.emitter import (
    BAD_ADDRESS,
    CLOSED,
    DEFAULT_MAX_DATAGRAM_BYTES,
    DISCONNECTED,
    JSON_LIBRARY,
    NO_SOCKET,
    NOT_CONNECTED,
    NOT_OBJECT,
    OTHER,
    PERMISSION_DENIED,
    QUEUE_FULL,
    REFUSED,
    TOO_LARGE,
    UNSERIALIZABLE,
    Emitter,
)

__version__ = "0.1.0"

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
    "REFUSED",
    "TOO_LARGE",
    "UNIX_PATH_MAX_BYTES",
    "UNSERIALIZABLE",
    "Emitter",
    "check_unix_path",
    "parse_host_port",
]
