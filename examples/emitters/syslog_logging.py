"""Python logging to ingest through the standard library's SysLogHandler.

ingest publishes a syslog message only when it is a JSON object, so the
handler gets a formatter that writes one: the level, the message, and the
record's ``ctx`` (``log.warning("disk full", extra={"ctx": {"disk": "sda"}})``).
The syslog header (priority, ident) arrives as ``syslog_*`` attributes.
"""

import json
import logging
import socket
from logging.handlers import SysLogHandler


class JsonFormatter(logging.Formatter):
    """One JSON object a record."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname, "msg": record.getMessage(), **getattr(record, "ctx", {})},
            ensure_ascii=False,
        )


def syslog_handler(
    address: str | tuple[str, int] = "/run/ingest/ingest.sock",
    facility: int = SysLogHandler.LOG_USER,
) -> logging.Handler:
    """A handler for ingest's unix socket (a path) or UDP listener (host, port)."""
    if isinstance(address, str):
        handler = SysLogHandler(address=address, facility=facility, socktype=socket.SOCK_DGRAM)
    else:
        handler = SysLogHandler(address=address, facility=facility)
    handler.setFormatter(JsonFormatter())
    return handler


if __name__ == "__main__":
    log = logging.getLogger("app")
    log.addHandler(syslog_handler())
    log.warning("disk full", extra={"ctx": {"disk": "sda"}})
