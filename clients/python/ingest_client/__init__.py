"""ingest-client: send JSON events to a local ``ingest serve``, fire and forget.

    from ingest_client import Emitter
    events = Emitter(unix="/run/ingest/ingest.sock")   # or Emitter(udp="127.0.0.1:5140")
    events.emit({"event": "signup", "user": 42})        # never raises, never blocks

Standard library only; orjson when installed (``ingest-client[fast]``). The
daemon ships this same package and re-exports it as ``ingest.client``.
"""

from ingest_client import emitter
from ingest_client.address import check_unix_path, parse_host_port
from ingest_client.emitter import *  # noqa: F403 -- the Emitter and its drop reasons

__version__ = "0.1.0"

__all__ = ["check_unix_path", "parse_host_port"]
__all__ += emitter.__all__  # the Emitter, its drop reasons and the address constants
