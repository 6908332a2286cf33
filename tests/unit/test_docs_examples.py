"""The configurations the docs show are the files the test suite runs.

A page shows a file by a marker line, ``<!-- example: PATH -->``, right above
a fenced block: the block must be PATH's text, byte for byte, so what an
operator copies from the page is what the tests run. Each file shown must be
run somewhere: the emitter clients and the nginx, HAProxy and rsyslog
configurations by tests/system/test_emitters.py, the units and the sysctl file by
tests/system/test_systemd.py (systemd-analyze verify, the drop-ins too), the
TOML files here, through the same validation as ``ingest check-config``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.config import build_settings, load_file
from tests.helpers import REPO

DOCS = REPO / "docs"
MARKER = re.compile(r"^<!-- example: (\S+) -->\n```[^\n]*\n(.*?)^```$", re.M | re.S)
LOOSE_MARKER = re.compile(r"<!-- example: ")
# Who runs each kind of file the docs show (beyond the TOML files, validated
# below). A file in none of these, and no TOML, fails the test.
RUNNERS = {
    "examples/emitters/": REPO / "tests/system/test_emitters.py",
    "examples/nginx/": REPO / "tests/system/test_emitters.py",
    "examples/haproxy/": REPO / "tests/system/test_emitters.py",
    "examples/rsyslog/": REPO / "tests/system/test_emitters.py",
    "systemd/": REPO / "tests/system/test_systemd.py",
    "examples/lan/ingest.socket.d-": REPO / "tests/system/test_systemd.py",
    "examples/real-pubsub/ingest.service.d-": REPO / "tests/system/test_systemd.py",
}


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def shown() -> list[tuple[Path, str, str]]:
    """(page, file path, block text) for every marked block of every page."""
    return [
        (page, match[1], match[2])
        for page in pages()
        for match in MARKER.finditer(page.read_text())
    ]


def test_the_guides_show_examples() -> None:
    files = {path for _, path, _ in shown()}
    assert {
        "examples/emitters/gelf_logging.py",
        "examples/emitters/syslog_logging.py",
        "examples/emitters/statsd_clients.py",
        "examples/nginx/ingest.conf",
        "examples/haproxy/haproxy.cfg",
        "examples/rsyslog/60-ingest.conf",
        "systemd/ingest.socket",
        "systemd/ingest.service",
        "systemd/99-ingest.conf",
        "examples/lan/ingest.toml",
        "examples/real-pubsub/ingest.toml",
        "examples/lan/ingest.socket.d-lan.conf",
        "examples/real-pubsub/ingest.service.d-credentials.conf",
    } <= files


def test_every_marker_is_followed_by_a_fenced_block() -> None:
    for page in pages():
        text = page.read_text()
        assert len(LOOSE_MARKER.findall(text)) == len(MARKER.findall(text)), page


@pytest.mark.parametrize(
    ("page", "path", "block"),
    [pytest.param(*item, id=f"{item[0].relative_to(DOCS)}:{item[1]}") for item in shown()],
)
def test_a_shown_file_is_byte_identical_to_the_file(page: Path, path: str, block: str) -> None:
    assert block == (REPO / path).read_text(), f"{page.relative_to(REPO)} shows {path}"


@pytest.mark.parametrize("path", sorted({p for _, p, _ in shown()}))
def test_a_shown_file_is_run_by_the_test_suite(path: str) -> None:
    if path.endswith(".toml"):
        return  # validated below
    runner = next((r for prefix, r in RUNNERS.items() if path.startswith(prefix)), None)
    assert runner is not None, f"nothing runs {path}"
    source = runner.read_text()
    name = Path(path).name
    module = path.removesuffix(".py").replace("/", ".")
    assert name in source or module in source, f"{runner.name} does not use {path}"


@pytest.mark.parametrize("path", sorted({p for _, p, _ in shown() if p.endswith(".toml")}))
def test_a_shown_toml_file_is_a_valid_configuration(path: str) -> None:
    build_settings({}, {}, load_file(str(REPO / path)))


def test_every_emitter_example_is_shown_in_a_guide() -> None:
    files = {path for _, path, _ in shown()}
    examples = {str(p.relative_to(REPO)) for p in (REPO / "examples/emitters").glob("*.py")}
    assert examples - files == set()
