"""Settings: precedence, validation messages, listeners (ingest/config.py, cli.settings_from)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest

from ingest.cli import build_parser, settings_from
from ingest.config import (
    DEFAULT_UDP,
    DEFAULT_UNIX_PATH,
    MAX_DATAGRAM_CEILING,
    PUBSUB_MAX_REQUEST_BYTES,
    PUBSUB_MAX_REQUEST_MESSAGES,
    SERVE_OPTIONS,
    ConfigError,
    Listener,
    Settings,
    build_settings,
    load_file,
    parse_host_port,
)

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
    assert settings.udp_rcvbuf_bytes == 4 << 20
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
        ("metrics", "", None),
        ("metrics", "[::1]:9464", ("::1", 9464)),
        ("log_level", "WARNING", "warning"),
        ("pubsub_endpoint", "localhost:8085", "localhost:8085"),
        ("max_datagram_bytes", str(MAX_DATAGRAM_CEILING), MAX_DATAGRAM_CEILING),
        ("unix_gid", "root", 0),  # --unix-group: a name, resolved to its gid
        ("unix_gid", "4242", 4242),  # or a numeric gid
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
    ("max_datagram_bytes", "15"),
    ("max_datagram_bytes", str(MAX_DATAGRAM_CEILING + 1)),
    ("udp_rcvbuf_bytes", "4095"),
    ("unix_mode", "999"),
    ("unix_mode", "rw-rw----"),
    ("unix_mode", 660),  # a TOML decimal 660 is 0o1224, not 0o660
    ("drain_timeout_s", "-0.1"),
    ("drain_timeout_s", "inf"),
    ("publish_timeout_s", "0"),
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
