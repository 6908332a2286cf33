"""``ingest.client`` is ``ingest_client.emitter``, the light client's module.

    from ingest.client import Emitter        # as before; new code:
    from ingest_client import Emitter

The Emitter lives in ``clients/python/ingest_client`` (the ``ingest-client``
distribution, standard library only); the daemon's distribution ships that
same source package. Importing this module makes ``ingest.client`` the very
same module object as ``ingest_client.emitter``, not a module of copies, so
existing imports, module state (the live Emitters, the fork and exit hooks)
and anything patched on it (``mock.patch("ingest.client._monotonic")``) are
one and the same. The star import is for readers and type checkers; at
run time this module replaces itself in ``sys.modules``.
"""

from __future__ import annotations

import sys

from ingest_client import emitter as _emitter
from ingest_client.emitter import *  # noqa: F403 -- for readers and type checkers
from ingest_client.emitter import __all__  # noqa: F401 -- what it exports

sys.modules[__name__] = _emitter
