"""``ingest.client``: the light client's Emitter and its names, re-exported.

    from ingest.client import Emitter        # as before; new code:
    from ingest_client import Emitter

The Emitter lives in ``clients/python/ingest_client`` (the ``ingest-client``
distribution, standard library only); the daemon's distribution ships that
same source package. This module re-exports what ``ingest_client.emitter``
exports (its ``__all__``): the same objects, not copies. The emitter's
module state (the live Emitters, the fork and exit hooks, the clock and pid
it reads) stays in ``ingest_client.emitter``: patch it there.
"""

from __future__ import annotations

# The emitter's own __all__ decides what is re-exported, so the two lists can
# never differ (a star import takes exactly the names of __all__).
from ingest_client.emitter import *  # noqa: F403
from ingest_client.emitter import __all__ as __all__  # noqa: PLC0414 (re-exported as is)
