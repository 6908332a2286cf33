"""Watching a running daemon: everything here reads the pipeline, none of it
writes to it, and nothing in receive/, pipeline/, publish/ or spool/ imports
it: they report through stats.Stats, receive.tapped.Hub (which ``tap``'s hub
implements) and publish.health.PubSubHealth (which ``health`` evaluates), and
the daemon wires these in (tests/unit/test_layout.py holds the rule).

- ``metrics``: the Prometheus collector over the plain counters;
- ``health``: the health rule behind ``/healthz``, over publish/health.py's state;
- ``httpd``: the loopback HTTP server of ``/metrics``, ``/healthz`` and ``/tap``;
- ``snapshot`` + ``dashboard`` + ``top``: the live dashboard (``ingest top``,
  ``ingest serve --dashboard``), built from a ``/metrics`` scrape;
- ``tap``: ``ingest tap``'s hub, stream and command.
"""
