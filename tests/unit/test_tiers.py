"""The tiers (tests/tiers.py): a test is marked with its folder's tier, and
one whose fixtures need a higher tier than its folder gives stops the run,
so a test that starts the emulator or a daemon cannot hide in tests/unit/.
The table of fixtures is checked against every fixture the suite defines."""

from __future__ import annotations

import ast
import asyncio
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.tiers import (
    FIXTURE_TIERS,
    FOLDER_TIERS,
    MisplacedTest,
    Tier,
    TierViolation,
    mark_or_refuse,
    tier_of,
)

# What in a fixture's code (or in the module's own functions and classes it
# uses) opens a socket or starts a process.
STARTS = re.compile(
    r"\bsubprocess\b|\bPopen\b|socket\.socket\(|\.bind\(|\bDaemons\(|\bDaemonProcess\("
    r"|\bEmulator\(|\bTcpProxy\(|HTTPServer\(|grpc\.server\(|start_server\(|serve_forever"
)


@pytest.mark.parametrize(
    ("relpath", "fixtures", "tier"),
    [
        ("tests/unit/test_x.py", ["tmp_path", "monkeypatch"], Tier.UNIT),
        ("tests/integration/test_x.py", ["emulator", "pubsub"], Tier.INTEGRATION),
        ("tests/integration/test_x.py", [], Tier.INTEGRATION),
        ("tests/system/test_x.py", ["daemons", "emulator"], Tier.SYSTEM),
        ("tests/system/test_x.py", [], Tier.SYSTEM),
        ("clients/python/tests/test_x.py", [], Tier.INTEGRATION),
        ("clients/python/tests/test_x.py", ["sockdir"], Tier.INTEGRATION),
        ("clients/python/tests/test_x.py", ["daemons"], Tier.SYSTEM),
    ],
)
def test_the_tier_is_the_folders_or_for_the_client_its_fixtures(
    relpath: str, fixtures: list[str], tier: Tier
) -> None:
    assert tier_of(relpath, fixtures) is tier


@pytest.mark.parametrize(
    ("relpath", "fixture"),
    [
        ("tests/unit/test_x.py", "emulator"),
        ("tests/unit/test_x.py", "pubsub"),
        ("tests/unit/test_x.py", "sockdir"),
        ("tests/unit/test_x.py", "daemons"),
        ("tests/integration/test_x.py", "daemons"),
        ("tests/integration/test_x.py", "tmux"),
    ],
)
def test_a_fixture_above_the_folders_tier_is_refused(relpath: str, fixture: str) -> None:
    with pytest.raises(MisplacedTest, match=rf"requests '{fixture}'.*move it to tests/"):
        tier_of(relpath, ["tmp_path", fixture])


@pytest.mark.parametrize("relpath", ["tests/test_x.py", "examples/test_x.py", "tests/x/test_x.py"])
def test_a_test_outside_every_tier_folder_is_refused(relpath: str) -> None:
    with pytest.raises(MisplacedTest, match="in no tier folder"):
        tier_of(relpath, [])


@dataclass
class FakeItem:
    path: Path
    nodeid: str
    fixturenames: list[str]
    markers: list[str] = field(default_factory=list)

    def add_marker(self, marker: str) -> None:
        self.markers.append(marker)


def test_the_hook_marks_every_test_and_stops_the_run_naming_each_misplaced_one() -> None:
    good = FakeItem(REPO / "tests/unit/test_a.py", "tests/unit/test_a.py::ok", ["tmp_path"])
    system = FakeItem(REPO / "tests/system/test_b.py", "tests/system/test_b.py::s", ["daemons"])
    mark_or_refuse(REPO, [good, system])
    assert (good.markers, system.markers) == (["unit"], ["system"])

    hidden = FakeItem(REPO / "tests/unit/test_c.py", "tests/unit/test_c.py::emu", ["emulator"])
    loose = FakeItem(REPO / "tests/test_d.py", "tests/test_d.py::loose", [])
    with pytest.raises(pytest.UsageError) as info:
        mark_or_refuse(REPO, [good, hidden, loose])
    assert "tests/unit/test_c.py::emu" in str(info.value)
    assert "tests/test_d.py::loose" in str(info.value)


def test_this_very_test_carries_the_unit_marker(request: pytest.FixtureRequest) -> None:
    """The root conftest.py's hook is wired: it marked the running suite."""
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("system") is None


def suite_files() -> list[Path]:
    files = [REPO / "conftest.py"]
    for folder in FOLDER_TIERS:
        files.extend(sorted((REPO / folder).rglob("*.py")))
    return files


def fixtures_in(path: Path) -> list[tuple[str, list[str], str]]:
    """(name, the fixtures it requests, its code and the code of the module's
    own functions and classes it uses, transitively) for each fixture."""
    tree = ast.parse(path.read_text())
    top = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not any("fixture" in ast.unparse(d) for d in node.decorator_list):
            continue
        seen, todo, code = {node.name}, [node], []
        while todo:
            part = todo.pop()
            code.append(ast.unparse(part))
            for used in ast.walk(part):
                if isinstance(used, ast.Name) and used.id in top and used.id not in seen:
                    seen.add(used.id)
                    todo.append(top[used.id])
        found.append((node.name, [a.arg for a in node.args.args], "\n".join(code)))
    return found


def test_every_fixture_that_opens_a_socket_or_starts_a_process_has_a_tier() -> None:
    defined: set[str] = set()
    missing = []
    for path in suite_files():
        for name, requests, code in fixtures_in(path):
            defined.add(name)
            inherited = any(r in FIXTURE_TIERS for r in requests)
            # tests/unit/conftest.py names subprocess and socket to refuse them
            refuses = name == "_no_sockets_no_processes"
            if STARTS.search(code) and name not in FIXTURE_TIERS and not inherited and not refuses:
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing, f"add these to tests/tiers.py FIXTURE_TIERS: {missing}"
    assert set(FIXTURE_TIERS) <= defined, set(FIXTURE_TIERS) - defined


def test_the_scan_sees_the_fixtures_it_must() -> None:
    """The check above would pass vacuously on a scan that finds nothing."""
    names = {
        name for path in suite_files() for name, _, code in fixtures_in(path) if STARTS.search(code)
    }
    assert {"emulator", "daemons", "rig", "tmux", "private_emulator", "light"} <= names


def test_a_unit_test_that_opens_a_socket_fails() -> None:
    with pytest.raises(TierViolation, match="socket"):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TierViolation, match="socket"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_a_unit_test_that_starts_a_process_fails() -> None:
    with pytest.raises(TierViolation, match="process"):
        subprocess.run(["true"], check=False)


def test_an_event_loop_still_runs_in_a_unit_test() -> None:
    """Its self-pipe is a socket pair, made from descriptors: allowed."""
    assert asyncio.run(asyncio.sleep(0, result=7)) == 7
