"""Python logging to ingest as GELF, with graypy (``pip install graypy``).

graypy compresses each record with zlib into one UDP datagram, in chunks of
1,420 bytes when it is larger; ingest reassembles the chunks and publishes
the GELF object it inflated, byte for byte. ``extra=`` fields arrive as GELF
additional fields (``_user_id``).
"""

import logging

import graypy


def gelf_handler(host: str = "127.0.0.1", port: int = 5140) -> logging.Handler:
    """A handler sending each record to ingest's UDP listener."""
    return graypy.GELFUDPHandler(host, port)


if __name__ == "__main__":
    log = logging.getLogger("app")
    log.addHandler(gelf_handler())
    log.warning("user %s signed up", "ann", extra={"user_id": 7})
