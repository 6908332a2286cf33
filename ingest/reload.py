"""What a reload (SIGHUP) may change in a running daemon, decided before
anything is touched. Pure: settings in, settings and reasons out.

A reload re-reads the configuration file and the environment over the
command line's flags (cli.settings_from, the validation ``check-config``
runs), then the daemon applies what ``plan`` returns (reloader.Reloader).

Every setting is in exactly one of three places here (tests/system/test_reload.py
checks it):

- RESTART_ONLY: a running daemon cannot take it over; it keeps its old value
  until a restart;
- DEPENDENCIES: applied live, but only when a restart-only setting (or a
  fact fixed at startup: STARTUP_FIXED) allows it; otherwise it keeps its old
  value too, and the log names both settings and why;
- LIVE: applied live, whatever else is configured.

What "applied live" means for each: ``log_level``; ``udp_allow`` and
``unix_allow_uids``, ``max_datagram_bytes``, the input formats,
``max_event_bytes``, ``syslog_wrap_text``: every reader is rebuilt around its
socket; the queue's bounds (events already queued stay; a smaller bound only
refuses what comes next); batching, for batches started from then on;
``drain_timeout_s``; attributes, attribute fields, the ordering key field and
routes, for events decoded from then on (queued ones keep what they were
built with); ``unix_mode``, ``unix_gid`` and ``udp_rcvbuf_bytes``: set on the
sockets the daemon bound (systemd's keep what ingest.socket set) and used for
the ones it binds from then on; listeners added or removed (an unchanged
listener keeps its socket; a removed one is read until empty, then closed).

A reload whose change depends on a restart-only setting is not refused: the
rest of it is applied and that change is reported as not applied, like a
restart-only change. Refusing the whole file would hold back changes that do
not depend on it (a tighter --udp-allow, a log level to debug a problem) for
one that cannot take effect before a restart either way, and the operator
learns the same from the warning line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.config import SERVE_OPTIONS, ConfigError, Settings, check_attribute_keys

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

# What a running daemon decided at startup from its settings, and keeps: the
# pipeline is built for plain or metadata messages (Settings.metadata), the
# publishers and queued lanes number the topics (Settings.topics), and the
# sockets came from the flags, or from systemd or the defaults.
STARTUP_FIXED = {
    "metadata": "the message form chosen at startup, plain or metadata",
    "topics": "the topics published to since startup",
    "default_listeners": "the listeners systemd passed, or the defaults",
}


@dataclass(frozen=True)
class Dependency:
    """Reloadable ``settings`` (applied together, or not at all) whose new
    values take effect only if ``needs`` (a RESTART_ONLY setting or a
    STARTUP_FIXED fact) of the running daemon allows. ``blocked(running,
    planned, topics)``: why ``planned`` (the new settings, restart-only ones
    left as they run) cannot take effect, or ""."""

    settings: tuple[str, ...]
    needs: str
    blocked: Callable[[Settings, Settings, tuple[str, ...]], str]


def _listeners_blocked(running: Settings, planned: Settings, topics: tuple[str, ...]) -> str:
    if planned.default_listeners == running.default_listeners and not (
        running.default_listeners and planned.listeners != running.listeners
    ):
        return ""
    return "which sockets exist is ingest.socket's to say"


def _allow_uids_blocked(running: Settings, planned: Settings, topics: tuple[str, ...]) -> str:
    # The uid comes with the kernel's credentials record, which a socket gets
    # only with SO_PASSCRED, set when --unix-credentials was on at startup:
    # without it a reader would check nothing and admit every sender.
    if planned.unix_allow_uids and not running.unix_credentials:
        return (
            "off since startup; the allow-list checks each sender's uid, which the "
            "kernel gives only with credentials on"
        )
    return ""


def _form_blocked(running: Settings, planned: Settings, topics: tuple[str, ...]) -> str:
    if planned.metadata != running.metadata:
        return "switching between plain and metadata messages"
    return ""


def _routes_blocked(running: Settings, planned: Settings, topics: tuple[str, ...]) -> str:
    unknown = sorted({route.topic for route in planned.routes} - set(topics))
    if unknown:
        return f"no route may add one: {', '.join(unknown)}"
    return ""


def _attribute_keys_blocked(running: Settings, planned: Settings, topics: tuple[str, ...]) -> str:
    # The new file was valid as a whole; with --unix-credentials kept as it
    # runs, its sender_* attributes may clash with, or add too many to, the
    # new attributes (or the syslog ones --input-formats brings).
    try:
        check_attribute_keys(planned)
    except ConfigError as exc:
        state = "on" if running.unix_credentials else "off"
        return f"{state} since startup; with it, {exc}"
    return ""


# Evaluated in order, each on what the ones before left: the attribute keys
# are checked with the new metadata first, then with the old metadata and
# the new input formats, after which everything they count is as it runs.
DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency(("listeners", "default_listeners"), "default_listeners", _listeners_blocked),
    Dependency(("unix_allow_uids",), "unix_credentials", _allow_uids_blocked),
    Dependency(METADATA, "metadata", _form_blocked),
    Dependency(METADATA, "topics", _routes_blocked),
    Dependency(METADATA, "unix_credentials", _attribute_keys_blocked),
    Dependency(("input_formats",), "unix_credentials", _attribute_keys_blocked),
)

# Applied live whatever else runs. Each was checked against every
# restart-only setting: the bounds and batching are read by the queue and
# batcher as they are (with a spool too: it takes what the bound refuses);
# the datagram and event limits, udp_allow and syslog_wrap_text by the
# rebuilt readers (udp_allow on UDP sockets, adopted ones too); the socket
# options are set on the sockets the daemon bound; drain_timeout_s and
# log_level are read when used.
LIVE = (
    "queue_max_events",
    "queue_max_bytes",
    "batch_max_messages",
    "batch_max_bytes",
    "batch_linger_ms",
    "batch_max_latency_ms",
    "max_datagram_bytes",
    "udp_rcvbuf_bytes",
    "unix_mode",
    "unix_gid",
    "udp_allow",
    "drain_timeout_s",
    "log_level",
    "max_event_bytes",
    "syslog_wrap_text",
)


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
    kept: list[str] = []
    restart = {name: getattr(old, name) for name in RESTART_ONLY if _differs(old, new, name)}
    kept.extend(f"{_flag(name)} (needs a restart)" for name in restart)
    planned = dataclasses.replace(new, **restart) if restart else new
    for dependency in DEPENDENCIES:
        if not any(_differs(old, planned, name) for name in dependency.settings):
            continue
        why = dependency.blocked(old, planned, topics)
        if why:
            back = {name: getattr(old, name) for name in dependency.settings}
            planned = dataclasses.replace(planned, **back)
            kept.append(f"{_flags(dependency.settings)} ({_needs(dependency.needs)}: {why})")
    changed = [
        item.name for item in dataclasses.fields(Settings) if _differs(old, planned, item.name)
    ]
    return Plan(planned, kept, changed)


def _differs(old: Settings, new: Settings, name: str) -> bool:
    return bool(getattr(new, name) != getattr(old, name))


def _needs(name: str) -> str:
    if name in STARTUP_FIXED:
        return f"depends on {STARTUP_FIXED[name]}"
    return f"depends on {_flag(name)}"


def _flags(names: tuple[str, ...]) -> str:
    # listeners are --udp and --unix; default_listeners is no option of its own.
    return ", ".join(
        "--udp/--unix" if name == "listeners" else _flag(name)
        for name in names
        if name != "default_listeners"
    )


def _flag(name: str) -> str:
    return next(option.flag for option in SERVE_OPTIONS if option.key == name)
