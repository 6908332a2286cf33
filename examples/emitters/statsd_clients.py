"""statsd and DogStatsD clients pointed at ingest (``pip install statsd
datadog``). Every sample becomes one event: ingest is not an aggregator.

``disable_telemetry=True`` stops the DogStatsD client from adding 11
counters about itself every 10 s, each of which would be an event too.
"""

import statsd
from datadog import DogStatsd


def statsd_client(host: str = "127.0.0.1", port: int = 5140) -> statsd.StatsClient:
    return statsd.StatsClient(host, port)


def dogstatsd_client(host: str = "127.0.0.1", port: int = 5140) -> DogStatsd:
    return DogStatsd(host=host, port=port, disable_telemetry=True)


def dogstatsd_unix_client(socket_path: str = "/run/ingest/ingest.sock") -> DogStatsd:
    return DogStatsd(socket_path=socket_path, disable_telemetry=True)


if __name__ == "__main__":
    statsd_client().incr("page.views")
    dogstatsd_client().increment("page.views", tags=["env:prod"])
