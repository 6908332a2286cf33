"""Watching a running daemon: everything here reads the pipeline, none of it
writes to it.

- ``metrics``: the Prometheus collector over the plain counters;
- ``health``: the health rule behind ``/healthz``;
- ``httpd``: the loopback HTTP server of ``/metrics``, ``/healthz`` and ``/tap``;
- ``snapshot`` + ``dashboard`` + ``top``: the live dashboard (``ingest top``,
  ``ingest serve --dashboard``), built from a ``/metrics`` scrape;
- ``tap``: ``ingest tap``'s hub, stream and command.
"""
