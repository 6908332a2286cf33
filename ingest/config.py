"""Settings: one frozen, validated object built at the edge.

Every setting has a flag, an ``INGEST_*`` environment twin and a TOML key of
the same name; precedence is flags > environment > file > defaults. Values are
validated here, once, and every error names the flag that fixes it.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import logging
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ingest.vocabulary import Described, Fsync, Reload

# The address rules and the default socket path are the light client's, so
# the Emitter and the daemon agree on them (one implementation, in the
# package the daemon ships: clients/python/ingest_client); re-exported here
# ("X as X") for the modules and tests that import them from the settings.
from ingest_client.address import DEFAULT_UNIX_PATH as DEFAULT_UNIX_PATH  # noqa: PLC0414
from ingest_client.address import UNIX_PATH_MAX_BYTES as UNIX_PATH_MAX_BYTES  # noqa: PLC0414
from ingest_client.address import check_unix_path as check_unix_path  # noqa: PLC0414
from ingest_client.address import parse_host_port as parse_host_port  # noqa: PLC0414

log = logging.getLogger(__name__)

# Pub/Sub quotas and limits (cloud.google.com/pubsub/quotas, "Resource limits").
PUBSUB_MAX_REQUEST_MESSAGES = 1000  # messages per PublishRequest
PUBSUB_MAX_REQUEST_BYTES = 10_000_000  # encoded bytes per PublishRequest
PUBSUB_MAX_ATTRIBUTES = 100  # attributes per message
PUBSUB_MAX_ATTRIBUTE_KEY_BYTES = 256
PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES = 1024
PUBSUB_MAX_ORDERING_KEY_BYTES = 1024
PUBSUB_RESERVED_KEY_PREFIX = "goog"  # attribute keys Pub/Sub keeps for itself
# Datagram ceiling: UDP carries at most 65,507 payload bytes over IPv4; unix
# datagrams can be larger, but a protobuf length prefix of <= 3 bytes (lengths
# below 2 MiB) keeps the batcher's per-message overhead a fixed bound.
MAX_DATAGRAM_CEILING = 1 << 20
# What a datagram may be written in (receive/dialects.py), the order --input-formats lists.
INPUT_FORMATS = ("json", "gelf", "syslog", "statsd")

# A gid is a 32-bit unsigned integer; (gid_t)-1 means "leave unchanged" to chown(2).
GID_MAX = (1 << 32) - 2
UID_MAX = (1 << 32) - 2  # (uid_t)-1 means 'no change' to the kernel
# Far above any real config file; bounds the memory a wrong --config can take.
CONFIG_MAX_BYTES = 1 << 20
# Pub/Sub resource names (cloud.google.com/pubsub/docs/pubsub-basics, "Resource
# names"): a letter, then letters, digits and - _ . ~ + %; 3-255 characters.
PUBSUB_TOPIC_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")

DEFAULT_UDP = "127.0.0.1:5140"
DEFAULT_ENDPOINT = "pubsub.googleapis.com:443"
DEFAULT_METRICS = "127.0.0.1:9464"
ENV_PREFIX = "INGEST_"


class ConfigError(Exception):
    """A bad setting; ``str()`` is one line naming the flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class Listener:
    """One configured endpoint; ``label`` is the bounded metrics label."""

    kind: str  # "udp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def label(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    project: str
    topic: str
    listeners: tuple[Listener, ...]
    # True when no --udp/--unix was given and the defaults stood in: sockets
    # passed by systemd then replace them all (systemd.plan_listeners).
    default_listeners: bool = False
    create_topic: bool = False
    queue_max_events: int = 100_000
    queue_max_bytes: int = 64 << 20
    publishers: int = 4
    batch_max_messages: int = PUBSUB_MAX_REQUEST_MESSAGES
    batch_max_bytes: int = PUBSUB_MAX_REQUEST_BYTES
    batch_linger_ms: float = 5.0
    batch_max_latency_ms: float = 1000.0
    max_datagram_bytes: int = 65_535
    udp_rcvbuf_bytes: int = 32 << 20
    unix_mode: int = 0o660
    unix_gid: int | None = None  # --unix-group, resolved; None: the daemon's group
    udp_allow: tuple[IPNetwork, ...] = ()  # empty: every sender
    drain_timeout_s: float = 10.0
    publish_timeout_s: float = 10.0
    publish_compression: str = "none"
    pubsub_endpoint: str = DEFAULT_ENDPOINT
    metrics: tuple[str, int] | None = parse_host_port(DEFAULT_METRICS)  # None: disabled
    log_level: str = "info"
    dashboard: bool = False
    spool_dir: str | None = None  # None: no disk spool
    spool_max_bytes: int = 1 << 30
    spool_fsync: Fsync = Fsync.ROLL
    # Pub/Sub-native messages (pipeline/message.py); all empty: the plain path.
    attributes: tuple[tuple[str, str], ...] = ()  # --attribute KEY=VALUE
    attribute_fields: tuple[tuple[str, str], ...] = ()  # --attribute-field KEY=FIELD
    ordering_key_field: str | None = None
    routes: tuple[RouteRule, ...] = ()
    unix_credentials: bool = False  # implied by unix_allow_uids
    unix_allow_uids: tuple[int, ...] = ()  # empty: every sender
    # The dialects every listener takes (receive/dialects.py).
    input_formats: frozenset[str] = frozenset(INPUT_FORMATS)
    max_event_bytes: int = MAX_DATAGRAM_CEILING  # an inflated GELF message, at most
    syslog_wrap_text: bool = False

    @property
    def metadata(self) -> bool:
        """Messages carry more than ``data``: the metadata pipeline."""
        return bool(
            self.attributes
            or self.attribute_fields
            or self.ordering_key_field
            or self.routes
            or self.unix_credentials
        )

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic this daemon may publish to: --topic first, then the routes'."""
        return tuple(dict.fromkeys((self.topic, *(route.topic for route in self.routes))))

    @property
    def topic_path(self) -> str:
        return topic_path(self.project, self.topic)

    @property
    def topic_paths(self) -> tuple[str, ...]:
        """``topics``' paths, in their order."""
        return tuple(topic_path(self.project, topic) for topic in self.topics)


def topic_path(project: str, topic: str) -> str:
    """A topic's resource name: the one place its shape is written."""
    return f"projects/{project}/topics/{topic}"


def topic_id_of(path: str) -> str:
    """The topic ID in ``topic_path``'s result, for code handed only the path."""
    return path.rpartition("/")[2]


# --- value parsers: take a raw value (str from flag/env, or a TOML value) ---


def check_text(raw: Any) -> None:
    """Refuse what no setting may hold, before any parser sees it.

    A NUL byte makes every path and name call raise ValueError deep in the
    daemon; os.environ and argv carry bytes that are not UTF-8 as lone
    surrogates, which cannot be logged, labelled in /metrics or encoded for
    Pub/Sub; a control or line-separator character would split the one-line
    messages. Whitespace around a value is trimmed by the parsers, so it may be
    anything."""
    if isinstance(raw, list | tuple):
        for item in raw:
            check_text(item)
        return
    if not isinstance(raw, str):
        return
    if "\x00" in raw:
        raise ValueError(f"must not contain a NUL byte (got {raw!r})")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ValueError(f"is not valid UTF-8 (got {shown!r})") from None
    for char in raw.strip():
        if not char.isprintable() and char != " ":
            raise ValueError(f"has a non-printable character U+{ord(char):04X} (got {raw!r})")


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"must be an integer (got {raw!r})")
        if isinstance(raw, str):
            try:
                value = int(raw.replace("_", ""), 10)
            except ValueError:
                raise ValueError(f"must be an integer (got {raw!r})") from None
        elif isinstance(raw, int):
            value = raw
        else:
            raise ValueError(f"must be an integer (got {raw!r})")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:,} and {hi:,} (got {value:,})")
        return value

    return parse


def _float_range(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"must be a number (got {raw!r})")
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):  # Overflow: a TOML int beyond a float
            raise ValueError(f"must be a number (got {raw!r})") from None
        if not lo <= value <= hi:  # also rejects NaN
            raise ValueError(f"must be between {lo:g} and {hi:g} (got {raw!r})")
        return value

    return parse


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(f"must be true or false (got {raw!r})")


def _octal_mode(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw, 8)
        except ValueError:
            raise ValueError(f"must be an octal file mode such as 0660 (got {raw!r})") from None
    else:
        raise ValueError(f"must be an octal file mode such as 0660 (got {raw!r})")
    if not 0 <= value <= 0o777:
        raise ValueError(f"must be an octal file mode between 000 and 777 (got {raw!r})")
    return value


def _group(raw: Any) -> int:
    """A group name, or a numeric gid, that exists in the group database
    (a gid no group has is as unknown as a misspelt name); returns the gid."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a group name or a numeric gid")
    name = raw.strip()
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    if not (name.isascii() and name.isdigit()):
        raise ValueError(f"group {name!r} does not exist")
    gid = int(name)
    if gid > GID_MAX:
        raise ValueError(f"gid must be between 0 and {GID_MAX} (got {name})")
    try:
        grp.getgrgid(gid)
    except KeyError:
        raise ValueError(f"group {gid} does not exist") from None
    return gid


def _networks(raw: Any) -> tuple[IPNetwork, ...]:
    """CIDRs (IPv4 or IPv6); a bare address is a /32 or /128."""
    out = []
    for item in _as_list(raw):
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            if "has host bits set" in str(exc):
                net = ipaddress.ip_network(item, strict=False)
                raise ValueError(f"{item!r} has host bits set; did you mean {net}?") from None
            raise ValueError(f"{item!r} is not an IP network such as 10.0.0.0/8") from None
    return tuple(out)


def _name(what: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"must be a non-empty {what}")
        if any(c.isspace() or c == "/" for c in raw):
            raise ValueError(f"must be a {what} without spaces or '/' (got {raw!r})")
        return raw

    return parse


def _topic_id(raw: Any) -> str:
    value = _name("topic ID")(raw)
    if not PUBSUB_TOPIC_ID_RE.fullmatch(value):
        raise ValueError(
            "must be 3-255 characters starting with a letter, then letters, digits "
            f"and - _ . ~ + % (got {raw!r})"
        )
    if value.startswith("goog"):
        raise ValueError(f"must not start with goog, which Pub/Sub reserves (got {raw!r})")
    return value


def _optional_dir(raw: Any) -> str | None:
    if not isinstance(raw, str):
        raise ValueError(f"must be a directory path, or empty to disable (got {raw!r})")
    value = raw.strip()
    if value and not value.startswith("/"):
        raise ValueError(f"must be an absolute path (got {raw!r})")
    return value or None


def _fsync_policy(raw: Any) -> Fsync:
    policies = {str(policy): policy for policy in Fsync}
    value = str(raw).strip().lower()
    if value not in policies:
        raise ValueError(f"must be one of {', '.join(Fsync)} (got {raw!r})")
    return policies[value]


def _compression(raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in ("none", "gzip"):  # pubsub.PUBLISH_COMPRESSIONS
        raise ValueError(f"must be none or gzip (got {raw!r})")
    return value


def _formats(raw: Any) -> frozenset[str]:
    names = [str(item).strip().lower() for item in _as_list(raw)]
    for name in names:
        if name not in INPUT_FORMATS:
            raise ValueError(f"{name!r} is not one of {', '.join(INPUT_FORMATS)}")
    if not names:
        raise ValueError(f"needs at least one of {', '.join(INPUT_FORMATS)}")
    return frozenset(names)


def _log_level(raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError(f"must be one of debug, info, warning, error (got {raw!r})")
    return value


def _endpoint(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be HOST:PORT (got {raw!r})")
    parse_host_port(raw)
    return raw.strip()


def _optional_address(raw: Any) -> tuple[str, int] | None:
    if not isinstance(raw, str):
        raise ValueError(f"must be HOST:PORT, or empty to disable (got {raw!r})")
    if not raw.strip():
        return None
    return parse_host_port(raw)


def _udp_listeners(raw: Any) -> tuple[Listener, ...]:
    out = []
    for item in _as_list(raw):
        host, port = parse_host_port(item)
        out.append(Listener("udp", host=host, port=port))
    return tuple(out)


def _unix_listeners(raw: Any) -> tuple[Listener, ...]:
    out = []
    for item in _as_list(raw):
        if not item.startswith("/"):
            raise ValueError(f"must be an absolute path (got {item!r})")
        check_unix_path(item)
        out.append(Listener("unix", path=item))
    return tuple(out)


def _as_list(raw: Any) -> list[str]:
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list | tuple) and all(isinstance(part, str) for part in raw):
        items = [part.strip() for part in raw]
    else:
        raise ValueError(f"must be a list of strings (got {raw!r})")
    return [item for item in items if item]


def _attribute_key(key: str) -> str:
    if not key:
        raise ValueError("has an empty attribute key")
    if len(key.encode()) > PUBSUB_MAX_ATTRIBUTE_KEY_BYTES:
        raise ValueError(
            f"attribute key {key[:40]!r}... is over {PUBSUB_MAX_ATTRIBUTE_KEY_BYTES} bytes"
        )
    if key.startswith(PUBSUB_RESERVED_KEY_PREFIX):
        raise ValueError(
            f"attribute key {key!r} starts with {PUBSUB_RESERVED_KEY_PREFIX}, "
            "which Pub/Sub reserves"
        )
    return key


def _field_path(raw: str) -> str:
    """FIELD, or a dotted path into nested objects (``user.id``)."""
    if not raw or any(not step for step in raw.split(".")):
        raise ValueError(f"field {raw!r} is not a field name or a dotted path such as user.id")
    return raw


def _pairs(raw: Any, what: str) -> list[tuple[str, str]]:
    """KEY=REST items; a key given twice is refused."""
    out: list[tuple[str, str]] = []
    for item in _as_list(raw):
        key, sep, rest = item.partition("=")
        if not sep:
            raise ValueError(f"must be {what} (got {item!r})")
        key = _attribute_key(key.strip())
        if any(key == seen for seen, _ in out):
            raise ValueError(f"attribute key {key!r} is given twice")
        out.append((key, rest.strip()))
    return out


def _attributes(raw: Any) -> tuple[tuple[str, str], ...]:
    pairs = _pairs(raw, "KEY=VALUE")
    for key, value in pairs:
        if len(value.encode()) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES:
            raise ValueError(
                f"the value of {key!r} is over {PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )
    return tuple(pairs)


def _attribute_fields(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((key, _field_path(field)) for key, field in _pairs(raw, "KEY=FIELD"))


def _optional_field(raw: Any) -> str | None:
    if not isinstance(raw, str):
        raise ValueError(f"must be a field name (got {raw!r})")
    return _field_path(raw.strip()) if raw.strip() else None


@dataclass(frozen=True)
class RouteRule:
    """``--route TOPIC:FIELD=VALUE``."""

    topic: str
    field: str
    value: str


def _routes(raw: Any) -> tuple[RouteRule, ...]:
    out = []
    for item in _as_list(raw):
        topic, sep, match = item.partition(":")
        field, sep2, value = match.partition("=")
        if not sep or not sep2:
            raise ValueError(f"must be TOPIC:FIELD=VALUE (got {item!r})")
        try:
            topic = _topic_id(topic.strip())
        except ValueError as exc:
            raise ValueError(f"topic of {item!r} {exc}") from None
        out.append(RouteRule(topic, _field_path(field.strip()), value.strip()))
    return tuple(out)


def _uids(raw: Any) -> tuple[int, ...]:
    """Numeric uids or user names (a TOML list may hold either)."""
    parse = _int_range(0, UID_MAX)
    if not isinstance(raw, list | tuple):
        raw = [raw]
    numbers = [str(i) if isinstance(i, int) and not isinstance(i, bool) else i for i in raw]
    out = []
    for item in _as_list(numbers):
        if item.isdigit():
            out.append(parse(item))
            continue
        try:
            out.append(pwd.getpwnam(item).pw_uid)
        except KeyError:
            raise ValueError(f"{item!r} is not a user name or a numeric uid") from None
    return tuple(dict.fromkeys(out))


class Section(Described):
    """Where an option is listed: ``--help``'s groups and the reference's sections."""

    PUBLISHING = "publishing", "where events go, and how publish requests are made"
    LISTENERS = "listeners", "the sockets datagrams arrive on"
    ACCESS = "access", "who may send: the senders each listener admits"
    VALIDATION = "validation", "what a datagram may hold, and in which formats"
    QUEUE = "queue", "the memory queue between the listeners and the publishers"
    BATCHING = "batching", "how events are grouped into publish requests"
    SPOOL = "spool", "the disk spool for what the memory queue cannot hold"
    METADATA = "metadata", "what a message carries besides its data"
    OBSERVABILITY = "observability", "metrics, health, logs and the dashboard"


@dataclass(frozen=True)
class Option:
    """One setting: Settings field ``key``; flag ``--name``; env ``INGEST_NAME``; TOML ``name``.

    The default is the Settings field's (``default_value``); ``unset`` says
    what a default of nothing (None, empty, off) means, ``show`` how to write
    the default as one would type it, and ``default`` replaces both for an
    option whose Settings field is filled some other way (the listeners).
    """

    key: str
    parse: Callable[[Any], Any]
    help: str
    repeat: bool = False
    is_flag: bool = False  # store_true on the command line
    name: str = ""  # flag name when it differs from key (units read better unsaid)
    metavar: str = ""  # in --help, when the default (from the name) reads wrong
    flag_lists: bool = True  # a repeat flag's value may be a comma-separated list
    section: Section = dataclasses.field(kw_only=True)
    reload: Reload = dataclasses.field(kw_only=True)  # what a SIGHUP does with a change (reload.py)
    unset: str = dataclasses.field(default="", kw_only=True)
    show: Callable[[Any], str] | None = dataclasses.field(default=None, kw_only=True)
    default: str = dataclasses.field(default="", kw_only=True)
    settings_field: str = dataclasses.field(default="", kw_only=True)  # when it is not ``key``

    @property
    def file_key(self) -> str:
        return self.name or self.key

    @property
    def flag(self) -> str:
        return "--" + self.file_key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.file_key.upper()

    @property
    def fills(self) -> str:
        """The Settings field this option's value goes to."""
        return self.settings_field or self.key

    @property
    def required(self) -> bool:
        return not self.default and _settings_default(self.key) is _NO_DEFAULT

    @property
    def default_value(self) -> Any:
        """Settings' default for ``key``, or ``_NO_DEFAULT``."""
        return _settings_default(self.key)

    @property
    def default_text(self) -> str:
        """The default as the reference and ``--help`` write it ("" when required)."""
        if self.default or self.required:
            return self.default
        value = self.default_value
        if value == ():
            return self.unset or "none"
        if value is None or value is False:
            return self.unset or "off"
        if self.show is not None:
            return self.show(value)
        return show_value(value)

    @property
    def metavar_text(self) -> str:
        """The value's placeholder in ``--help`` and the reference."""
        if self.metavar:
            return self.metavar
        return self.key.split("_")[-1].upper() if not self.repeat else "ADDR"

    @property
    def value_type(self) -> str:
        """The kind of value in a TOML file, for the reference."""
        if self.is_flag:
            return "boolean"
        if self.repeat:
            return "list"
        value = self.default_value
        if self.show is None and isinstance(value, int | float) and not isinstance(value, bool):
            return "integer" if isinstance(value, int) else "number"
        return "string"


_NO_DEFAULT = object()


def _settings_default(key: str) -> Any:
    for item in dataclasses.fields(Settings):
        if item.name == key:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    return _NO_DEFAULT


def show_value(value: Any) -> str:
    """A default as one would type it: sizes of whole MiB or GiB say so too."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        for shift, unit in ((30, "GiB"), (20, "MiB")):
            if value >= 1 << shift and value % (1 << shift) == 0:
                return f"{value} ({value >> shift} {unit})"
        return str(value)
    return str(value)


def _show_address(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _show_formats(value: frozenset[str]) -> str:
    return ",".join(name for name in INPUT_FORMATS if name in value)


_UNLESS_LISTENERS = "when neither --udp nor --unix is given"

# A new setting: its Settings field with the default, then a row here with its
# section and reload policy (a DEPENDS one also needs its reload.DEPENDENCIES
# entry; tests/system/test_reload.py says so); `make reference` then rewrites
# the generated pages (docs/reference/, docs/ingest.1), which tests compare.
SERVE_OPTIONS: tuple[Option, ...] = (
    Option(
        "project",
        _name("project ID"),
        "Google Cloud project ID",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "topic",
        _topic_id,
        "Pub/Sub topic ID",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "udp",
        _udp_listeners,
        "UDP listen HOST:PORT, repeatable",
        True,
        metavar="HOST:PORT",
        section=Section.LISTENERS,
        reload=Reload.DEPENDS,
        default=f"{DEFAULT_UDP}, {_UNLESS_LISTENERS}",
        settings_field="listeners",
    ),
    Option(
        "unix",
        _unix_listeners,
        "unix datagram socket path, repeatable",
        True,
        metavar="PATH",
        section=Section.LISTENERS,
        reload=Reload.DEPENDS,
        default=f"{DEFAULT_UNIX_PATH}, {_UNLESS_LISTENERS}",
        settings_field="listeners",
    ),
    Option(
        "create_topic",
        _bool,
        "create the topic if it does not exist",
        is_flag=True,
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "queue_max_events",
        _int_range(1, 100_000_000),
        "memory queue bound in events",
        section=Section.QUEUE,
        reload=Reload.LIVE,
    ),
    Option(
        "queue_max_bytes",
        _int_range(1024, 1 << 40),
        "memory queue bound in bytes",
        section=Section.QUEUE,
        reload=Reload.LIVE,
    ),
    Option(
        "publishers",
        _int_range(1, 256),
        "publisher coroutines",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "batch_max_messages",
        _int_range(1, PUBSUB_MAX_REQUEST_MESSAGES),
        "messages per publish request; the default is the Pub/Sub maximum",
        section=Section.BATCHING,
        reload=Reload.LIVE,
    ),
    Option(
        "batch_max_bytes",
        _int_range(MAX_DATAGRAM_CEILING + 1024, PUBSUB_MAX_REQUEST_BYTES),
        "encoded bytes per publish request; the default is the Pub/Sub maximum",
        section=Section.BATCHING,
        reload=Reload.LIVE,
    ),
    Option(
        "batch_linger_ms",
        _float_range(0, 10_000),
        "how long a partial batch waits, in milliseconds (per lane with metadata)",
        section=Section.BATCHING,
        reload=Reload.LIVE,
    ),
    Option(
        "batch_max_latency_ms",
        _float_range(0, 60_000),
        "longest a partial batch waits past its linger for the request budget "
        "(~10 partial requests a second across lanes), from its oldest event "
        "(at or below --batch-linger-ms: no budget)",
        section=Section.BATCHING,
        reload=Reload.LIVE,
    ),
    Option(
        "max_datagram_bytes",
        _int_range(16, MAX_DATAGRAM_CEILING),
        "largest datagram accepted; larger ones are rejected whole",
        section=Section.VALIDATION,
        reload=Reload.LIVE,
    ),
    Option(
        "udp_rcvbuf_bytes",
        _int_range(4096, 1 << 30),
        "UDP SO_RCVBUF to request",
        section=Section.LISTENERS,
        reload=Reload.LIVE,
    ),
    Option(
        "unix_mode",
        _octal_mode,
        "file mode of unix sockets, octal",
        section=Section.LISTENERS,
        reload=Reload.LIVE,
        show=lambda mode: f"{mode:04o}",
    ),
    Option(
        "unix_gid",
        _group,
        "group of the unix socket files (who may send, with --unix-mode)",
        name="unix_group",
        metavar="GROUP",
        section=Section.LISTENERS,
        reload=Reload.LIVE,
        unset="the daemon's group",
    ),
    Option(
        "udp_allow",
        _networks,
        "accept UDP only from this CIDR, repeatable; others are rejected and counted "
        "(source_denied)",
        True,
        metavar="CIDR",
        section=Section.ACCESS,
        reload=Reload.LIVE,
        unset="every sender",
    ),
    Option(
        "drain_timeout_s",
        _float_range(0, 3600),
        "seconds to publish what is queued at shutdown",
        name="drain_timeout",
        metavar="SECONDS",
        section=Section.QUEUE,
        reload=Reload.LIVE,
    ),
    Option(
        "publish_timeout_s",
        _float_range(0.1, 600),
        "deadline of one publish request in seconds",
        name="publish_timeout",
        metavar="SECONDS",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "publish_compression",
        _compression,
        "gRPC compression of publish requests: none or gzip",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "pubsub_endpoint",
        _endpoint,
        "Pub/Sub gRPC endpoint",
        metavar="HOST:PORT",
        section=Section.PUBLISHING,
        reload=Reload.RESTART,
    ),
    Option(
        "metrics",
        _optional_address,
        "serve /metrics, /healthz and /tap on HOST:PORT; empty disables",
        metavar="HOST:PORT",
        section=Section.OBSERVABILITY,
        reload=Reload.RESTART,
        show=_show_address,
    ),
    Option(
        "log_level",
        _log_level,
        "debug, info, warning or error",
        section=Section.OBSERVABILITY,
        reload=Reload.LIVE,
    ),
    Option(
        "spool_dir",
        _optional_dir,
        "disk spool directory: events the memory queue cannot hold, and what is "
        "unpublished at shutdown, go there",
        section=Section.SPOOL,
        reload=Reload.RESTART,
        unset="off",
    ),
    Option(
        "spool_max_bytes",
        _int_range(1 << 20, 1 << 50),
        "disk spool bound in bytes; beyond it events are dropped (spool_full)",
        section=Section.SPOOL,
        reload=Reload.RESTART,
    ),
    Option(
        "spool_fsync",
        _fsync_policy,
        "when the spool fsyncs: "
        + ", ".join(f"{policy} ({policy.description})" for policy in Fsync),
        section=Section.SPOOL,
        reload=Reload.RESTART,
    ),
    Option(
        "attributes",
        _attributes,
        "set attribute KEY to VALUE on every message, repeatable",
        True,
        name="attribute",
        flag_lists=False,
        metavar="KEY=VALUE",
        section=Section.METADATA,
        reload=Reload.DEPENDS,
    ),
    Option(
        "attribute_fields",
        _attribute_fields,
        "set attribute KEY from the event's FIELD (a dotted path reads nested "
        "objects), repeatable; absent or null: no attribute",
        True,
        name="attribute_field",
        flag_lists=False,
        metavar="KEY=FIELD",
        section=Section.METADATA,
        reload=Reload.DEPENDS,
    ),
    Option(
        "ordering_key_field",
        _optional_field,
        "take each message's ordering key from this field",
        metavar="FIELD",
        section=Section.METADATA,
        reload=Reload.DEPENDS,
    ),
    Option(
        "routes",
        _routes,
        "publish events whose FIELD reads VALUE to TOPIC instead of --topic, "
        "repeatable; the first match wins",
        True,
        name="route",
        flag_lists=False,
        metavar="TOPIC:FIELD=VALUE",
        section=Section.METADATA,
        reload=Reload.DEPENDS,
    ),
    Option(
        "unix_credentials",
        _bool,
        "give each unix socket event the sender's pid, uid and gid as attributes "
        "(sender_pid, sender_uid, sender_gid), from the kernel",
        is_flag=True,
        section=Section.METADATA,
        reload=Reload.RESTART,
    ),
    Option(
        "unix_allow_uids",
        _uids,
        "accept unix datagrams only from this uid or user, repeatable (implies "
        "--unix-credentials); others are rejected and counted (sender_denied)",
        True,
        name="unix_allow_uid",
        metavar="UID",
        section=Section.ACCESS,
        reload=Reload.DEPENDS,
        unset="every sender",
    ),
    Option(
        "input_formats",
        _formats,
        "the formats every listener accepts, comma-separated: "
        + ", ".join(INPUT_FORMATS)
        + "; a datagram of another is rejected (format_disabled)",
        True,
        metavar="FORMATS",
        section=Section.VALIDATION,
        reload=Reload.DEPENDS,
        show=_show_formats,
    ),
    Option(
        "max_event_bytes",
        _int_range(16, MAX_DATAGRAM_CEILING),
        "largest event a GELF message may inflate or reassemble to; larger ones "
        "are rejected (too_large) having inflated no more",
        section=Section.VALIDATION,
        reload=Reload.LIVE,
    ),
    Option(
        "syslog_wrap_text",
        _bool,
        'publish a syslog message that is not a JSON object as {"message": TEXT} '
        "instead of rejecting it",
        is_flag=True,
        section=Section.VALIDATION,
        reload=Reload.LIVE,
    ),
    Option(
        "dashboard",
        _bool,
        "show the live dashboard below the log when stdout is a terminal",
        is_flag=True,
        section=Section.OBSERVABILITY,
        reload=Reload.RESTART,
    ),
)


def load_file(path: str, where: str = "--config") -> dict[str, Any]:
    """Read a TOML config file: a regular file of UTF-8 TOML. Errors name
    ``where`` (the flag, or the variable the path came from)."""
    shown = path if path.isprintable() else repr(path)  # one line, whatever its bytes
    content = _read_config(path, shown, where)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            where, f"{shown} is not UTF-8 (byte 0x{content[exc.start]:02x} at line {line})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"{shown} is not valid TOML: {exc}") from None
    except ValueError:  # int() refuses more than 4300 digits (sys.int_info)
        raise ConfigError(where, f"{shown} is not valid TOML: an integer is too long") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise ConfigError(
            where, f"{shown} is not valid TOML: arrays or tables nested too deeply"
        ) from None
    known = {o.file_key for o in SERVE_OPTIONS}
    for key in data:
        if key not in known:
            raise ConfigError(where, f"{shown}: unknown key {key!r}")
    return data


def _read_config(path: str, shown: str, where: str) -> bytes:
    # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait forever.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(where, f"cannot read {shown}: {exc.strerror}") from None
    content = b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(where, f"{shown} is not a regular file ({_file_kind(st)})")
        while len(content) <= CONFIG_MAX_BYTES:
            chunk = os.read(fd, CONFIG_MAX_BYTES + 1 - len(content))
            if not chunk:
                break
            content += chunk
    except OSError as exc:
        raise ConfigError(where, f"cannot read {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(content) > CONFIG_MAX_BYTES:
        raise ConfigError(where, f"{shown} is larger than {CONFIG_MAX_BYTES >> 20} MiB")
    return content


def _file_kind(st: os.stat_result) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(st.st_mode)), "not a file")


def build_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge flags > env > file > defaults and validate.

    ``flags`` holds only the options given on the command line, keyed by
    Settings field. Unknown ``INGEST_*`` variables only warn, so a newer
    setting in the environment cannot stop an older daemon.
    """
    file_values = file_values or {}
    known_env = {o.env for o in SERVE_OPTIONS} | {ENV_PREFIX + "CONFIG"}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known_env:
            log.warning("ignoring unknown environment variable %s", name)
    values: dict[str, Any] = {}
    for option in SERVE_OPTIONS:
        if option.key in flags:
            raw, where = flags[option.key], option.flag
        elif option.env in env:
            raw, where = env[option.env], f"{option.flag} (from {option.env})"
        elif option.file_key in file_values:
            raw, where = (
                file_values[option.file_key],
                f"{option.flag} (config key {option.file_key})",
            )
        else:
            continue
        try:
            check_text(raw)
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
    for option in SERVE_OPTIONS:
        if option.required and option.key not in values:
            raise ConfigError(option.flag, f"is required (or set {option.env})")
    listeners = values.pop("udp", ()) + values.pop("unix", ())
    values["default_listeners"] = not listeners
    if not listeners:
        host, port = parse_host_port(DEFAULT_UDP)
        listeners = (
            Listener("udp", host=host, port=port),
            Listener("unix", path=DEFAULT_UNIX_PATH),
        )
    labels = [item.label for item in listeners]
    for item in listeners:
        if labels.count(item.label) > 1:
            raise ConfigError(f"--{item.kind}", f"{item.label} is given twice")
    if values.get("unix_allow_uids"):
        values["unix_credentials"] = True
    _check_attribute_keys(values)
    return Settings(listeners=listeners, **values)


# The attributes --unix-credentials sets (receive/sources.py fills them in).
SENDER_ATTRIBUTES = ("sender_pid", "sender_uid", "sender_gid")
# The attributes a syslog event may get from its header (receive/dialects.py).
SYSLOG_ATTRIBUTES = tuple(
    f"syslog_{name}" for name in ("severity", "facility", "timestamp", "host", "app", "pid")
)


def check_attribute_keys(settings: Settings) -> None:
    """``_check_attribute_keys`` on settings already built: a reload's, which
    mixes the new file's values with restart-only ones kept as they run
    (reload.py), so the file's own validation does not vouch for them."""
    names = ("attributes", "attribute_fields", "unix_credentials", "input_formats")
    _check_attribute_keys({name: getattr(settings, name) for name in names})


def _check_attribute_keys(values: Mapping[str, Any]) -> None:
    """Keys unique across --attribute, --attribute-field and the sender's,
    and no more of them than Pub/Sub allows on a message."""
    seen: dict[str, str] = {}
    keys = [("--attribute", key) for key, _ in values.get("attributes", ())]
    keys += [("--attribute-field", key) for key, _ in values.get("attribute_fields", ())]
    if values.get("unix_credentials"):
        keys += [("--unix-credentials", key) for key in SENDER_ATTRIBUTES]
    if "syslog" in values.get("input_formats", INPUT_FORMATS):
        keys += [("--input-formats", key) for key in SYSLOG_ATTRIBUTES]
    for flag, key in keys:
        if key in seen:
            raise ConfigError(flag, f"attribute key {key!r} is also set by {seen[key]}")
        seen[key] = flag
    if len(keys) > PUBSUB_MAX_ATTRIBUTES:
        raise ConfigError(
            keys[-1][0],
            f"{len(keys)} attributes in all; Pub/Sub allows {PUBSUB_MAX_ATTRIBUTES} a message",
        )
