"""Settings: precedence, validation messages, listeners (ingest/config.py, cli.settings_from)."""

from __future__ import annotations

import datetime
import grp
import ipaddress
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ingest import config
from ingest.cli import build_parser, settings_from
from ingest.config import (
    CONFIG_MAX_BYTES,
    DEFAULT_UDP,
    DEFAULT_UNIX_PATH,
    MAX_DATAGRAM_CEILING,
    PUBSUB_MAX_ATTRIBUTE_KEY_BYTES,
    PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES,
    PUBSUB_MAX_REQUEST_BYTES,
    PUBSUB_MAX_REQUEST_MESSAGES,
    SERVE_OPTIONS,
    UNIX_PATH_MAX_BYTES,
    ConfigError,
    Listener,
    Settings,
    build_settings,
    load_file,
    parse_host_port,
    topic_id_of,
    topic_path,
)
from tests.helpers import REPO

REQUIRED = {"project": "proj", "topic": "events"}
OPTIONS = {option.key: option for option in SERVE_OPTIONS}


def build(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, **file: Any
) -> Settings:
    """build_settings with the required project and topic supplied as flags
    unless the environment or the file gives them."""
    env = env or {}
    required = {
        key: value
        for key, value in REQUIRED.items()
        if OPTIONS[key].env not in env and key not in file
    }
    return build_settings({**required, **(flags or {})}, env, file)


def parse_serve(*argv: str, env: dict[str, str] | None = None) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return settings_from(args, env or {})


# --------------------------------------------------------------- precedence


def test_defaults() -> None:
    settings = build()
    assert settings == Settings(
        project="proj",
        topic="events",
        listeners=(
            Listener("udp", host="127.0.0.1", port=5140),
            Listener("unix", path=DEFAULT_UNIX_PATH),
        ),
        default_listeners=True,  # none configured: sockets passed by systemd replace them
    )
    assert DEFAULT_UDP == "127.0.0.1:5140"
    assert settings.queue_max_events == 100_000
    assert settings.unix_mode == 0o660
    assert settings.max_datagram_bytes == 65_535
    assert settings.udp_rcvbuf_bytes == 32 << 20
    assert settings.batch_max_messages == PUBSUB_MAX_REQUEST_MESSAGES == 1000
    assert settings.batch_max_bytes == PUBSUB_MAX_REQUEST_BYTES == 10_000_000
    assert settings.drain_timeout_s == 10.0
    assert settings.topic_path == "projects/proj/topics/events"


def test_precedence_flags_over_env_over_file_over_defaults() -> None:
    file = {"publishers": 2, "queue_max_events": 7, "log_level": "error"}
    env = {"INGEST_PUBLISHERS": "3", "INGEST_QUEUE_MAX_EVENTS": "8"}
    flags = {"publishers": "5"}
    settings = build(flags, env, **file)
    assert settings.publishers == 5  # flag over env and file
    assert settings.queue_max_events == 8  # env over file
    assert settings.log_level == "error"  # file over default
    assert settings.batch_max_messages == 1000  # default
    assert build({}, env, **file).publishers == 3
    assert build({}, {}, **file).publishers == 2
    assert build().publishers == 4


def test_flag_name_differs_from_field_for_units() -> None:
    settings = build(env={"INGEST_DRAIN_TIMEOUT": "2.5"}, publish_timeout=3)
    assert settings.drain_timeout_s == 2.5
    assert settings.publish_timeout_s == 3.0
    assert OPTIONS["drain_timeout_s"].flag == "--drain-timeout"
    assert OPTIONS["drain_timeout_s"].env == "INGEST_DRAIN_TIMEOUT"


def test_required_settings_name_flag_and_env() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings({"project": "p"}, {}, {})
    assert str(info.value) == "--topic: is required (or set INGEST_TOPIC)"
    with pytest.raises(ConfigError, match=r"^--project: .*INGEST_PROJECT"):
        build_settings({"topic": "events"}, {}, {})
    assert build_settings({}, {"INGEST_PROJECT": "p", "INGEST_TOPIC": "events"}).project == "p"


def test_unknown_env_variable_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "INGEST_FROM_THE_FUTURE": "1",
        "INGEST_CONFIG": "/nonexistent.toml",  # known: read by the CLI
        "INGEST_PUBLISHERS": "6",
        "OTHER_VARIABLE": "x",
    }
    with caplog.at_level(logging.WARNING, logger="ingest.config"):
        settings = build(env=env)
    assert settings.publishers == 6
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["ignoring unknown environment variable INGEST_FROM_THE_FUTURE"]


# ----------------------------------------------------------- value parsing


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("queue_max_events", "1_000", 1000),
        ("queue_max_events", 250, 250),
        ("unix_mode", "0600", 0o600),
        ("unix_mode", "600", 0o600),
        ("unix_mode", 0o640, 0o640),  # a TOML integer written 0o640
        ("create_topic", "yes", True),
        ("create_topic", "off", False),
        ("create_topic", True, True),
        ("batch_linger_ms", "0", 0.0),
        ("batch_linger_ms", "2.5", 2.5),
        ("batch_linger_ms", 3, 3.0),
        ("batch_max_latency_ms", "0", 0.0),
        ("batch_max_latency_ms", "250", 250.0),
        ("metrics", "", None),
        ("metrics", "[::1]:9464", ("::1", 9464)),
        ("log_level", "WARNING", "warning"),
        ("pubsub_endpoint", "localhost:8085", "localhost:8085"),
        ("max_datagram_bytes", str(MAX_DATAGRAM_CEILING), MAX_DATAGRAM_CEILING),
        ("input_formats", "JSON, statsd", frozenset({"json", "statsd"})),
        ("input_formats", ["gelf"], frozenset({"gelf"})),
        ("max_event_bytes", "65536", 65536),
        ("syslog_wrap_text", "yes", True),
        ("unix_gid", "root", 0),  # --unix-group: a name, resolved to its gid
        ("unix_gid", "0", 0),  # or a numeric gid that exists
        (
            "udp_allow",
            "10.0.0.0/8, 192.168.1.7,2001:db8::/32",
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.7/32"),
                ipaddress.ip_network("2001:db8::/32"),
            ),
        ),
    ],
)
def test_valid_values(key: str, raw: Any, value: Any) -> None:
    option = OPTIONS[key]
    assert getattr(build({key: raw}), key) == value
    if isinstance(raw, str):
        assert getattr(build(env={option.env: raw}), key) == value
    assert getattr(build(**{option.file_key: raw}), key) == value


# One invalid value per setting; the test below checks every setting has one.
INVALID: list[tuple[str, Any]] = [
    ("project", ""),
    ("project", "my project"),
    ("project", "a/b"),
    ("topic", "ab"),  # Pub/Sub: 3-255 characters
    ("topic", "9lives"),  # ... starting with a letter
    ("topic", "x" * 256),
    ("udp", "127.0.0.1"),
    ("udp", "127.0.0.1:65536"),
    ("udp", "[not-v6]:5140"),
    ("unix", "relative/ingest.sock"),
    ("create_topic", "maybe"),
    ("queue_max_events", "abc"),
    ("queue_max_events", "0"),
    ("queue_max_events", True),
    ("queue_max_events", 1.5),
    ("queue_max_bytes", "1023"),
    ("publishers", "0"),
    ("publishers", "257"),
    ("batch_max_messages", str(PUBSUB_MAX_REQUEST_MESSAGES + 1)),
    ("batch_max_bytes", str(PUBSUB_MAX_REQUEST_BYTES + 1)),
    ("batch_max_bytes", "1000"),  # must hold the largest datagram
    ("batch_linger_ms", "-1"),
    ("batch_linger_ms", "nan"),
    ("batch_linger_ms", "soon"),
    ("batch_max_latency_ms", "-1"),
    ("batch_max_latency_ms", "60001"),
    ("batch_max_latency_ms", "nan"),
    ("max_datagram_bytes", "15"),
    ("max_datagram_bytes", str(MAX_DATAGRAM_CEILING + 1)),
    ("udp_rcvbuf_bytes", "4095"),
    ("unix_mode", "999"),
    ("unix_mode", "rw-rw----"),
    ("unix_mode", 660),  # a TOML decimal 660 is 0o1224, not 0o660
    ("drain_timeout_s", "-0.1"),
    ("drain_timeout_s", "inf"),
    ("publish_timeout_s", "0"),
    ("publish_compression", "zstd"),
    ("pubsub_endpoint", "pubsub.googleapis.com"),
    ("metrics", "9464"),
    ("log_level", "verbose"),
    ("unix_gid", "no-such-group-for-ingest"),
    ("udp_allow", "10.0.0.1/8"),  # host bits set: a typo for 10.0.0.0/8?
    ("udp_allow", "10.0.0.0/33"),
    ("udp_allow", "lan"),
    ("dashboard", "maybe"),
    ("spool_dir", "relative/spool"),
    ("spool_max_bytes", "1000"),
    ("spool_fsync", "sometimes"),
    ("attributes", "host"),  # no =
    ("attributes", "=web-1"),  # an empty key
    ("attributes", "googhost=web-1"),  # Pub/Sub reserves goog
    ("attributes", "k" * (PUBSUB_MAX_ATTRIBUTE_KEY_BYTES + 1) + "=v"),
    ("attributes", "k=" + "v" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES + 1)),
    ("attributes", ["k=1", "k=2"]),  # a key twice
    ("attribute_fields", "kind"),
    ("attribute_fields", "kind=user..id"),  # an empty step in the path
    ("attribute_fields", "kind="),
    ("ordering_key_field", "user."),
    ("routes", "errors=level"),  # no TOPIC:
    ("routes", "errors:level"),  # no =VALUE
    ("routes", "e:level=error"),  # not a topic ID
    ("routes", "goog-errors:level=error"),
    ("unix_credentials", "sometimes"),
    ("unix_allow_uids", "no-such-user-for-ingest"),
    ("unix_allow_uids", str(1 << 32)),
    ("input_formats", "json,xml"),
    ("input_formats", ","),  # none at all
    ("max_event_bytes", "15"),
    ("max_event_bytes", str(MAX_DATAGRAM_CEILING + 1)),
    ("syslog_wrap_text", "sometimes"),
]


def test_every_setting_has_an_invalid_value_case() -> None:
    assert {key for key, _ in INVALID} == set(OPTIONS)


@pytest.mark.parametrize(("key", "raw"), INVALID)
def test_invalid_value_from_any_source_names_the_flag(key: str, raw: Any) -> None:
    option = OPTIONS[key]
    with pytest.raises(ConfigError) as from_flag:
        build({key: raw})
    assert from_flag.value.flag == option.flag
    assert str(from_flag.value).startswith(f"{option.flag}: ")
    assert "\n" not in str(from_flag.value)

    if isinstance(raw, str):
        with pytest.raises(ConfigError) as from_env:
            build(env={option.env: raw})
        assert str(from_env.value).startswith(f"{option.flag} (from {option.env}): ")

    with pytest.raises(ConfigError) as from_file:
        build(**{option.file_key: raw})
    assert str(from_file.value).startswith(f"{option.flag} (config key {option.file_key}): ")


def test_out_of_range_message_gives_the_range() -> None:
    with pytest.raises(ConfigError) as info:
        build({"publishers": "300"})
    assert str(info.value) == "--publishers: must be between 1 and 256 (got 300)"


# --------------------------------------------------------------- listeners


def test_defaults_apply_only_when_no_listener_is_given() -> None:
    assert build({"unix": ["/tmp/a.sock"]}).listeners == (Listener("unix", path="/tmp/a.sock"),)
    assert build({"udp": ["0.0.0.0:9000"]}).listeners == (
        Listener("udp", host="0.0.0.0", port=9000),
    )
    assert build(env={"INGEST_UDP": "127.0.0.1:9001"}).listeners == (
        Listener("udp", host="127.0.0.1", port=9001),
    )
    assert build(unix=["/tmp/f.sock"]).listeners == (Listener("unix", path="/tmp/f.sock"),)


def test_list_env_vars_are_comma_separated() -> None:
    env = {"INGEST_UDP": "127.0.0.1:1, [::1]:2,", "INGEST_UNIX": "/tmp/a.sock,/tmp/b.sock"}
    assert build(env=env).listeners == (
        Listener("udp", host="127.0.0.1", port=1),
        Listener("udp", host="::1", port=2),
        Listener("unix", path="/tmp/a.sock"),
        Listener("unix", path="/tmp/b.sock"),
    )


def test_listener_labels() -> None:
    listeners = build({"udp": ["[::1]:5140", "127.0.0.1:5140"], "unix": ["/run/x.sock"]}).listeners
    assert [item.label for item in listeners] == [
        "udp:[::1]:5140",
        "udp:127.0.0.1:5140",
        "unix:/run/x.sock",
    ]


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ({"udp": ["127.0.0.1:5140", "127.0.0.1:5140"]}, "--udp"),
        ({"udp": ["[::1]:7", " [::1]:7 "]}, "--udp"),
        ({"unix": ["/tmp/a.sock", "/tmp/a.sock"]}, "--unix"),
    ],
)
def test_duplicate_listeners_are_rejected(flags: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(flags)
    assert info.value.flag == flag
    assert "given twice" in str(info.value)


# -------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:5140", ("127.0.0.1", 5140)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fe80::1]:1", ("fe80::1", 1)),
        (" pubsub.googleapis.com:443 ", ("pubsub.googleapis.com", 443)),
    ],
)
def test_parse_host_port(raw: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "host",
        ":80",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[::1:80",
        "[nope]:80",
        "h:port",
        "h:65536",
        "h:-1",
        "",
    ],
)
def test_parse_host_port_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_host_port(raw)


# ------------------------------------------------------------------- files


def test_load_file_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('project = "p"\ntopic = "events"\nudp = ["127.0.0.1:1"]\nunix_mode = "0600"\n')
    data = load_file(str(path))
    assert data == {"project": "p", "topic": "events", "udp": ["127.0.0.1:1"], "unix_mode": "0600"}


def test_load_file_rejects_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('project = "p"\ndrain_timeout_s = 3\n')  # the field name, not the key
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.flag == "--config"
    assert "unknown key 'drain_timeout_s'" in str(info.value)


def test_load_file_errors_name_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("project = \n")
    with pytest.raises(ConfigError, match=r"^--config: .*not valid TOML"):
        load_file(str(broken))
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*missing.toml"):
        load_file(str(tmp_path / "missing.toml"))


# -------------------------------------------------------------------- CLI


def test_settings_from_command_line() -> None:
    settings = parse_serve(
        "--project",
        "p",
        "--topic",
        "events",
        "--udp",
        "127.0.0.1:1,127.0.0.1:2",
        "--udp",
        "[::1]:3",
        "--unix",
        "/tmp/a.sock",
        "--create-topic",
        "--unix-mode",
        "0600",
        "--drain-timeout",
        "1.5",
    )
    assert [item.label for item in settings.listeners] == [
        "udp:127.0.0.1:1",
        "udp:127.0.0.1:2",
        "udp:[::1]:3",
        "unix:/tmp/a.sock",
    ]
    assert settings.create_topic is True
    assert settings.unix_mode == 0o600
    assert settings.drain_timeout_s == 1.5


def test_absent_flags_leave_env_and_file_in_force(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('project = "from-file"\ntopic = "events"\npublishers = 2\n')
    env = {"INGEST_CREATE_TOPIC": "true", "INGEST_PROJECT": "from-env"}
    settings = parse_serve("--config", str(config), env=env)
    assert settings.create_topic is True  # not reset by an absent store_true flag
    assert settings.project == "from-env"
    assert settings.publishers == 2
    assert parse_serve("--config", str(config), "--project", "flag", env=env).project == "flag"


def test_config_path_from_env(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('project = "p"\ntopic = "events"\npublishers = 9\n')
    assert parse_serve(env={"INGEST_CONFIG": str(config)}).publishers == 9
    other = tmp_path / "other.toml"
    other.write_text('project = "p"\ntopic = "events"\npublishers = 7\n')
    assert parse_serve("--config", str(other), env={"INGEST_CONFIG": str(config)}).publishers == 7


def test_settings_from_reports_file_errors(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('topic = "events"\nsurprise = 1\n')
    with pytest.raises(ConfigError, match=r"^--config: .*unknown key 'surprise'"):
        parse_serve("--config", str(config), "--project", "p")


# ------------------------------------------------- hostile values (issue 8)

# A valid value for every setting, as a string (flag, env or TOML string), of
# two characters at least: a bad character goes in the middle, not at an end
# where it would be trimmed as whitespace.
VALID_TEXT: dict[str, str] = {
    "project": "proj",
    "topic": "events",
    "udp": "127.0.0.1:5140",
    "unix": "/tmp/ingest.sock",
    "create_topic": "true",
    "queue_max_events": "1000",
    "queue_max_bytes": "65536",
    "publishers": "12",
    "batch_max_messages": "100",
    "batch_max_bytes": "2000000",
    "batch_linger_ms": "2.5",
    "batch_max_latency_ms": "500",
    "max_datagram_bytes": "65535",
    "udp_rcvbuf_bytes": "65536",
    "unix_mode": "0660",
    "unix_gid": "root",
    "udp_allow": "10.0.0.0/8",
    "drain_timeout_s": "10",
    "publish_timeout_s": "10",
    "publish_compression": "gzip",
    "pubsub_endpoint": "localhost:8085",
    "metrics": "127.0.0.1:9464",
    "log_level": "info",
    "dashboard": "false",
    "spool_dir": "/var/spool/ingest",
    "spool_max_bytes": "1073741824",
    "spool_fsync": "roll",
    "attributes": "host=web-1",
    "attribute_fields": "kind=event.kind",
    "ordering_key_field": "user.id",
    "routes": "errors:level=error",
    "unix_credentials": "true",
    "unix_allow_uids": "1000",
    "input_formats": "json,statsd",
    "max_event_bytes": "65536",
    "syslog_wrap_text": "true",
}


def test_every_setting_has_a_valid_text_value() -> None:
    assert set(VALID_TEXT) == set(OPTIONS)
    for key, raw in VALID_TEXT.items():
        assert len(raw) >= 2
        build({key: raw})


def _spoil(raw: str, bad: str) -> str:
    middle = len(raw) // 2
    return raw[:middle] + bad + raw[middle:]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("\x00", "NUL"),
        ("\udcff", "not valid UTF-8"),  # os.environ and argv carry bad bytes so
        ("\x1b", "non-printable"),
        ("\n", "non-printable"),
        ("\u2028", "non-printable"),  # LINE SEPARATOR: breaks one-line messages
    ],
)
@pytest.mark.parametrize("key", sorted(VALID_TEXT))
def test_bad_characters_in_any_string_setting_name_the_flag(
    key: str, bad: str, reason: str
) -> None:
    option = OPTIONS[key]
    raw = _spoil(VALID_TEXT[key], bad)
    sources: list[tuple[str, Any]] = [
        (option.flag + ": ", lambda: build({key: raw})),
        (f"{option.flag} (from {option.env}): ", lambda: build(env={option.env: raw})),
        (
            f"{option.flag} (config key {option.file_key}): ",
            lambda: build(**{option.file_key: raw}),
        ),
    ]
    if option.repeat:  # a TOML list
        sources.append(
            (
                f"{option.flag} (config key {option.file_key}): ",
                lambda: build(**{option.file_key: [raw]}),
            )
        )
    for prefix, attempt in sources:
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(prefix), message
        assert reason in message, message
        assert message.isprintable(), message  # one line, no raw control bytes


def test_surrounding_whitespace_is_still_trimmed() -> None:
    settings = build(env={"INGEST_CREATE_TOPIC": "true\n", "INGEST_PUBLISHERS": "\t3 "})
    assert settings.create_topic is True
    assert settings.publishers == 3


def test_unicode_paths_are_accepted() -> None:
    settings = build({"unix": ["/tmp/événements-🎉.sock"], "spool_dir": "/var/spool/données"})
    assert settings.listeners == (Listener("unix", path="/tmp/événements-🎉.sock"),)
    assert settings.spool_dir == "/var/spool/données"


HOSTILE_TOML: list[Any] = [
    "",
    " ",
    "x" * 5000,
    "9" * 5000,
    0,
    -1,
    10**30,
    -(10**30),
    10**400,
    1.5,
    2.0,
    -0.0,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    [],
    [1],
    [1.5],
    [True],
    [["127.0.0.1:1"]],
    [{"a": 1}],
    {},
    {"a": 1},
    datetime.date(2024, 1, 1),
    datetime.time(12, 0),
    datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.UTC),
]


@pytest.mark.parametrize("raw", HOSTILE_TOML, ids=repr)
def test_any_toml_value_is_either_valid_or_a_config_error(raw: Any) -> None:
    """Every TOML type in every key: a setting or a one-line ConfigError
    naming the key, never another exception (a traceback, and exit 1)."""
    for option in SERVE_OPTIONS:
        try:
            build(**{option.file_key: raw})
        except ConfigError as exc:
            assert str(exc).startswith(f"{option.flag} (config key {option.file_key}): ")
            assert str(exc).isprintable()


# ------------------------------------------------------ unix path length


def test_unix_path_of_107_bytes_is_accepted() -> None:
    path = "/tmp/" + "a" * 102
    assert len(path) == UNIX_PATH_MAX_BYTES == 107
    assert build({"unix": [path]}).listeners == (Listener("unix", path=path),)


@pytest.mark.parametrize(
    "path",
    [
        "/tmp/" + "a" * 103,  # 108 bytes: no room for the terminating NUL
        "/tmp/" + "a" * 500,
        "/tmp/" + "é" * 60,  # 65 characters, 125 bytes: the limit counts bytes
    ],
)
def test_unix_path_over_107_bytes_is_rejected(path: str) -> None:
    for attempt in (
        lambda: build({"unix": [path]}),
        lambda: build(env={"INGEST_UNIX": path}),
        lambda: build(unix=[path]),
    ):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert info.value.flag.startswith("--unix")
        assert f"{len(path.encode())} bytes" in str(info.value)
        assert "at most 107" in str(info.value)


# -------------------------------------------------------------- unix group


def _unused_gid() -> int:
    for gid in range(4242, 65000):
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
    pytest.skip("every gid from 4242 up is taken")


def test_numeric_unix_group_must_exist() -> None:
    assert build({"unix_gid": "0"}).unix_gid == 0
    assert build(unix_group=0).unix_gid == 0  # a TOML integer
    gid = _unused_gid()
    for attempt in (
        lambda: build({"unix_gid": str(gid)}),
        lambda: build(env={"INGEST_UNIX_GROUP": str(gid)}),
        lambda: build(unix_group=gid),
    ):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert info.value.flag.startswith("--unix-group")
        assert f"group {gid} does not exist" in str(info.value)


@pytest.mark.parametrize("raw", ["-1", "-0", "4294967295", "99999999999999999999999", "+0", "0x10"])
def test_out_of_range_numeric_unix_group_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"unix_gid": raw})
    assert str(info.value).startswith("--unix-group: ")


@pytest.mark.parametrize("raw", [-1, 4294967295, 10**30])
def test_out_of_range_toml_unix_group_is_rejected(raw: int) -> None:
    with pytest.raises(ConfigError) as info:
        build(unix_group=raw)
    assert str(info.value).startswith("--unix-group (config key unix_group): ")


# ----------------------------------------------------- names and addresses


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("udp", "a..b:5140"),  # getaddrinfo raises UnicodeError for it, not gaierror
        ("udp", "x" * 64 + ".example:5140"),  # a DNS label holds 63 bytes
        ("metrics", "a..b:9464"),
        ("pubsub_endpoint", "a..b:443"),
        ("udp", "127.0.0.1: 5140"),
        ("udp", "127.0.0.1:+5140"),
        ("udp", "127.0.0.1:٥١٤٠"),  # int() takes Arabic-Indic digits; a port does not
        ("topic", "événements"),  # Pub/Sub: ASCII letters, digits and - . _ ~ % +
        ("topic", "events!"),
        ("topic", "goog-events"),  # Pub/Sub reserves the goog prefix
    ],
)
def test_names_that_pass_a_loose_check_but_fail_later(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({key: raw})
    assert str(info.value).startswith(OPTIONS[key].flag + ": ")


def test_pubsub_topic_characters_are_accepted() -> None:
    assert build({"topic": "Ev.en_t~s%2B+-1"}).topic == "Ev.en_t~s%2B+-1"


# -------------------------------------------- config files, check-config, serve


REQUIRED_TOML = b'project = "p"\ntopic = "events"\n'


def test_config_path_from_env_is_named_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'project = "caf\xe9"\n')
    env = {"INGEST_CONFIG": str(path)}
    with pytest.raises(ConfigError) as info:
        parse_serve(env=env)
    assert str(info.value).startswith("--config (from INGEST_CONFIG): ")


def test_non_utf8_config_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'project = "p"\n\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert str(info.value) == f"--config: {path} is not UTF-8 (byte 0xe9 at line 3)"


def test_oversized_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(REQUIRED_TOML + b"#" * CONFIG_MAX_BYTES)
    with pytest.raises(ConfigError, match=r"^--config: .* is larger than 1 MiB"):
        load_file(str(path))


# --- Pub/Sub-native messages: repeatable KEY=VALUE settings and their limits


def test_message_settings_from_flags_env_and_toml_lists(tmp_path: Path) -> None:
    """Flags repeat and keep commas in values; the environment twin is a
    comma-separated list; the TOML key is a list."""
    args = build_parser().parse_args(
        [
            "serve", "--project", "p", "--topic", "events",
            "--attribute", "note=a,b", "--attribute", "host=web-1",
            "--route", "errors:level=error", "--route", "audit:kind=login",
            "--unix-allow-uid", "0,1",
        ]
    )  # fmt: skip
    settings = settings_from(args, {})
    assert settings.attributes == (("note", "a,b"), ("host", "web-1"))
    assert [(r.topic, r.field, r.value) for r in settings.routes] == [
        ("errors", "level", "error"),
        ("audit", "kind", "login"),
    ]
    assert settings.topics == ("events", "errors", "audit")
    # Every path comes from the one function, and gives its ID back.
    assert settings.topic_paths == (
        settings.topic_path,
        "projects/p/topics/errors",
        "projects/p/topics/audit",
    )
    assert [topic_id_of(path) for path in settings.topic_paths] == list(settings.topics)
    assert topic_path("p", "errors") == settings.topic_paths[1]
    assert settings.unix_allow_uids == (0, 1)
    assert settings.unix_credentials  # implied by the allow-list
    env = build(env={"INGEST_ATTRIBUTE": "host=web-1,dc=eu", "INGEST_ROUTE": "errors:level=error"})
    assert env.attributes == (("host", "web-1"), ("dc", "eu"))
    assert env.topics == ("events", "errors")
    config = tmp_path / "ingest.toml"
    config.write_text(
        'attribute = ["host=web-1"]\nattribute_field = ["kind=event.kind"]\n'
        'route = ["errors:level=error"]\nordering_key_field = "user.id"\n'
        "unix_allow_uid = [0]\n"
    )
    toml = settings_from(
        build_parser().parse_args(["serve", "--project", "p", "--topic", "events",
                                   "--config", str(config)]),
        {},
    )  # fmt: skip
    assert toml.attributes == (("host", "web-1"),)
    assert toml.attribute_fields == (("kind", "event.kind"),)
    assert toml.ordering_key_field == "user.id"
    assert toml.unix_allow_uids == (0,)
    assert toml.metadata and not build().metadata


@pytest.mark.parametrize(
    ("values", "flag", "needle"),
    [
        ({"attributes": "k=1", "attribute_fields": "k=f"}, "--attribute-field", "'k'"),
        (
            {"attributes": "sender_uid=1", "unix_credentials": "1"},
            "--unix-credentials",
            "sender_uid",
        ),
        (
            {
                "attributes": [f"k{i}=v" for i in range(98)],
                "unix_credentials": "1",
                "input_formats": "json",
            },
            "--unix-credentials",
            "101 attributes",
        ),
        # syslog's attributes count while syslog is accepted (the default)
        ({"attributes": "syslog_app=x"}, "--input-formats", "syslog_app"),
        ({"attributes": [f"k{i}=v" for i in range(95)]}, "--input-formats", "101 attributes"),
    ],
)
def test_attribute_keys_are_unique_and_within_pubsubs_count(
    values: dict[str, Any], flag: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(values)
    assert caught.value.flag == flag
    assert needle in str(caught.value)


def test_the_most_attributes_pubsub_allows_are_accepted() -> None:
    settings = build(
        {
            "attributes": [f"k{i}=v" for i in range(97)],
            "unix_credentials": "1",
            "input_formats": "json,gelf,statsd",
        }
    )
    assert len(settings.attributes) == 97
    assert len(build({"attributes": [f"k{i}=v" for i in range(94)]}).attributes) == 94
    # without syslog, its keys are free to use
    assert build({"attributes": "syslog_app=x", "input_formats": "json"}).attributes


def test_the_sample_config_file_shows_the_real_defaults() -> None:
    """systemd/ingest.toml, which operators copy, comments out one line per
    setting: each must be valid, and where the setting has a default it must
    be that default (a value shown for an option that is off by default is an
    example), so the sample cannot drift from Settings."""
    options = {option.file_key: option for option in config.SERVE_OPTIONS}
    shown = 0
    for line in (REPO / "systemd/ingest.toml").read_text().splitlines():
        match = re.match(r"^#\s?([a-z_]+) = (.+?)(\s+#.*)?$", line)
        if match is None:
            continue
        option = options[match.group(1)]
        value = option.parse(tomllib.loads(f"v = {match.group(2)}")["v"])
        if option.default_value not in (None, ()):
            assert value == option.default_value, line
            shown += 1
    assert shown >= 20  # the file still lists the settings
