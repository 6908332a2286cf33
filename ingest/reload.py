"""What a reload (SIGHUP) may change in a running daemon, decided before
anything is touched. Pure: settings in, settings and reasons out.

A reload re-reads the configuration file and the environment over the
command line's flags (cli.settings_from, the validation ``check-config``
runs), then the daemon applies what ``plan`` returns (daemon.Daemon.reload).

Applied live:

- ``log_level``; ``udp_allow`` and ``unix_allow_uids`` (with credentials on);
  ``max_datagram_bytes``; the input formats, ``max_event_bytes``,
  ``syslog_wrap_text``: every reader is rebuilt around its socket;
- the queue's bounds (events already queued stay; a smaller bound only
  refuses what comes next); batching: ``batch_max_messages``,
  ``batch_max_bytes``, ``batch_linger_ms``, for batches started from then on;
  ``drain_timeout_s``;
- attributes, attribute fields, the ordering key field and routes, for
  events decoded from then on (queued ones keep what they were built with),
  provided the daemon already publishes with metadata and the routes name
  topics it already publishes to;
- listeners added or removed. An unchanged listener keeps its socket; a
  removed one is read until empty, then closed. Added listeners are bound with
  the new ``unix_mode``, ``unix_group`` and ``udp_rcvbuf_bytes``, which
  existing sockets keep as they were bound.

Everything else needs a restart and keeps its old value until then; each such
change is named in the log (RESTART_ONLY, and the cases below).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ingest.config import SERVE_OPTIONS, Settings

# Settings a running daemon cannot take over: its identity, its connection,
# its spool and its HTTP endpoint, the number of publishers, and whether
# readers ask the kernel for credentials (sockets are bound accordingly).
RESTART_ONLY = (
    "project",
    "topic",
    "pubsub_endpoint",
    "create_topic",
    "publish_compression",
    "publish_timeout_s",
    "publishers",
    "spool_dir",
    "spool_max_bytes",
    "spool_fsync",
    "metrics",
    "dashboard",
    "unix_credentials",
)
# What a message carries: applied together, or not at all.
METADATA = ("attributes", "attribute_fields", "ordering_key_field", "routes")


@dataclass
class Plan:
    """``settings``: what the daemon runs with after the reload (the new
    settings, with every change it cannot make replaced by the old value).
    ``kept``: one line per change left for a restart. ``changed``: the
    names of the settings that do change."""

    settings: Settings
    kept: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def plan(old: Settings, new: Settings, topics: tuple[str, ...]) -> Plan:
    """What of ``new`` a daemon running ``old`` applies. ``topics``: those
    it publishes to (--topic's, then the routes' at startup)."""
    keep: dict[str, object] = {}
    kept: list[str] = []
    for name in RESTART_ONLY:
        if getattr(new, name) != getattr(old, name):
            keep[name] = getattr(old, name)
            kept.append(f"{_flag(name)} (needs a restart)")
    interim = dataclasses.replace(new, **keep) if keep else new  # type: ignore[arg-type]
    if any(getattr(new, name) != getattr(old, name) for name in METADATA):
        why = _metadata_unchangeable(old, interim, topics)
        if why:
            keep.update((name, getattr(old, name)) for name in METADATA)
            kept.append(f"attributes, ordering key and routes ({why}; needs a restart)")
    if new.default_listeners != old.default_listeners or (
        new.default_listeners and new.listeners != old.listeners
    ):
        # Listeners passed by systemd, or the defaults standing in for them:
        # which sockets exist is ingest.socket's to say.
        keep.update(listeners=old.listeners, default_listeners=old.default_listeners)
        kept.append("--udp/--unix (the listeners came from systemd or the defaults)")
    settings = dataclasses.replace(new, **keep) if keep else new  # type: ignore[arg-type]
    changed = [
        item.name
        for item in dataclasses.fields(Settings)
        if getattr(settings, item.name) != getattr(old, item.name)
    ]
    return Plan(settings, kept, changed)


def _metadata_unchangeable(old: Settings, new: Settings, topics: tuple[str, ...]) -> str:
    """Why a running daemon cannot take ``new``'s metadata, or ""."""
    if new.metadata != old.metadata:
        return "switching between plain and metadata messages"
    unknown = sorted({route.topic for route in new.routes} - set(topics))
    if unknown:
        return f"a route to a topic not published to since startup: {', '.join(unknown)}"
    return ""


def _flag(name: str) -> str:
    return next(option.flag for option in SERVE_OPTIONS if option.key == name)
