"""Config errors through the real CLI: ``ingest check-config`` and ``ingest serve`` run as
processes must exit 2 with one line, before serve contacts or binds anything."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import INGEST, assert_config_error, run_ingest, subject_to_file_modes
from tests.unit.test_config import REQUIRED_TOML, _unused_gid

BAD_FILES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("latin1", b'project = "caf\xe9"\ntopic = "events"\n', ("--config", "not UTF-8", "line 1")),
    ("bom-utf16", "project = 'p'\n".encode("utf-16"), ("--config", "not UTF-8")),
    ("syntax", b"project = \n", ("--config", "not valid TOML", "line 1")),
    ("huge-int", REQUIRED_TOML + b"publishers = " + b"9" * 5000 + b"\n", ("--config",)),
    ("deep", REQUIRED_TOML + b"udp = " + b"[" * 5000 + b"]" * 5000 + b"\n", ("--config",)),
    (
        "nul-unix",
        REQUIRED_TOML + b'unix = ["/tmp/a\\u0000b.sock"]\n',
        ("--unix (config key unix)", "NUL"),
    ),
    (
        "nul-spool",
        REQUIRED_TOML + b'spool_dir = "/tmp/sp\\u0000ool"\n',
        ("--spool-dir (config key spool_dir)", "NUL"),
    ),
    (
        "nul-group",
        REQUIRED_TOML + b'unix_group = "ro\\u0000ot"\n',
        ("--unix-group (config key unix_group)", "NUL"),
    ),
    (
        "nul-metrics",
        REQUIRED_TOML + b'metrics = "127.0.0.1\\u0000:9464"\n',
        ("--metrics (config key metrics)", "NUL"),
    ),
    (
        "float-overflow",
        REQUIRED_TOML + b"batch_linger_ms = " + b"9" * 400 + b"\n",
        ("--batch-linger-ms",),
    ),
    (
        "long-unix",
        REQUIRED_TOML + b'unix = "/tmp/' + b"a" * 200 + b'"\n',
        ("--unix", "at most 107"),
    ),
    ("idna-host", REQUIRED_TOML + b'metrics = "a..b:9464"\n', ("--metrics",)),
    ("table", REQUIRED_TOML + b"[unix]\npath = '/tmp/x'\n", ("--unix (config key unix)",)),
]


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("name", "content", "needles"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, command: str, name: str, content: bytes, needles: tuple[str, ...]
) -> None:
    """check-config and serve validate the same things: systemd's
    RestartPreventExitStatus=2 must stop the restart loop, so no traceback."""
    path = tmp_path / f"{name}.toml"
    path.write_bytes(content)
    assert_config_error(run_ingest(command, "--config", str(path)), *needles)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_config_path_that_is_not_a_regular_file(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes: a blocking open would wait forever
    assert_config_error(
        run_ingest(command, "--config", str(fifo), "--project", "p", "--topic", "events"),
        f"--config: {fifo} is not a regular file",
    )
    assert_config_error(
        run_ingest(command, "--config", str(tmp_path), "--project", "p", "--topic", "events"),
        f"--config: {tmp_path} is not a regular file",
    )
    assert_config_error(
        run_ingest(command, "--config", "/dev/zero", "--project", "p", "--topic", "events"),
        "--config: /dev/zero is not a regular file",
    )
    missing = tmp_path / "missing.toml"
    assert_config_error(
        run_ingest(command, "--config", str(missing)),
        f"--config: cannot read {missing}: No such file or directory",
    )


def test_unicode_config_path(tmp_path: Path) -> None:
    path = tmp_path / "réglages 🎉.toml"
    path.write_bytes(REQUIRED_TOML)
    result = run_ingest("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unreadable_config_file(command: str) -> None:
    wrapper = subject_to_file_modes()
    with tempfile.TemporaryDirectory(prefix="ingest-") as directory:
        path = Path(directory) / "ingest.toml"
        path.write_bytes(REQUIRED_TOML)
        os.chmod(path, 0o644)
        readable = run_ingest("check-config", "--config", str(path), wrapper=wrapper)
        assert readable.returncode == 0, readable.stderr  # the user reaches it
        os.chmod(path, 0)
        assert stat.S_IMODE(path.stat().st_mode) == 0
        assert_config_error(
            run_ingest(command, "--config", str(path), wrapper=wrapper),
            f"--config: cannot read {path}: Permission denied",
        )


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_non_utf8_environment_value_is_a_config_error(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env_bytes = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    env_bytes[b"INGEST_PROJECT"] = b"caf\xe9"
    env_bytes[b"INGEST_TOPIC"] = b"events"
    result = subprocess.run(
        [INGEST, command],
        capture_output=True,
        timeout=30,
        env=env_bytes,  # type: ignore[arg-type]
        check=False,
    )
    stderr = result.stderr.decode(errors="backslashreplace")
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("ingest: error: --project (from INGEST_PROJECT): "), stderr
    assert "not valid UTF-8" in stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_long_unix_path_flag_exits_2(command: str) -> None:
    path = "/tmp/" + "a" * 103
    assert_config_error(
        run_ingest(command, "--project", "p", "--topic", "events", "--unix", path),
        "--unix: ",
        "108 bytes",
        "at most 107",
    )


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unknown_numeric_unix_group_flag_exits_2(command: str) -> None:
    gid = _unused_gid()
    assert_config_error(
        run_ingest(command, "--project", "p", "--topic", "events", "--unix-group", str(gid)),
        f"--unix-group: group {gid} does not exist",
    )


def test_check_config_names_the_input_formats(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_bytes(
        REQUIRED_TOML + b'input_formats = ["statsd", "json"]\nsyslog_wrap_text = true\n'
    )
    result = run_ingest("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "formats json,statsd;" in result.stdout + result.stderr
    assert "syslog-wrap-text" in result.stdout + result.stderr
