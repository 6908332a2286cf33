"""The suite's tiers, and which fixtures put a test in which.

* unit (tests/unit/): no sockets, no processes, no emulator; `make test-fast`.
* integration (tests/integration/): the emulator, in-process pipelines, real
  sockets without a daemon, a plain second process.
* system (tests/system/): ``ingest`` processes, real clients, systemd, tmux.
* clients/python/tests/: the light client's own tests, which run it against
  real daemons; their tier follows from their fixtures (never unit).

The root conftest.py marks every test with its folder's tier and refuses to
collect a test whose fixtures need a higher one than its folder gives, so a
test that starts the emulator cannot hide among the unit tests.
FIXTURE_TIERS names every fixture that starts a process or opens a socket;
tests/unit/test_tiers.py checks that no such fixture is missing from it.
What a unit test's own code does is held while it runs: tests/unit/conftest.py
makes opening a socket or starting a process fail it (TierViolation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum
from pathlib import Path, PurePosixPath
from typing import Protocol

import pytest


class Tier(IntEnum):
    """Ordered: a test may sit in a higher tier than its fixtures need,
    never in a lower one."""

    UNIT = 1
    INTEGRATION = 2
    SYSTEM = 3

    @property
    def marker(self) -> str:
        return self.name.lower()


# Folder (relative to the repository) -> the tier its tests are in; None:
# the tier follows from the fixtures, at least FLOOR_OF_UNTIERED.
FOLDER_TIERS: dict[str, Tier | None] = {
    "tests/unit": Tier.UNIT,
    "tests/integration": Tier.INTEGRATION,
    "tests/system": Tier.SYSTEM,
    "clients/python/tests": None,
}
FLOOR_OF_UNTIERED = Tier.INTEGRATION

# Fixture -> the least tier a test requesting it (directly or through
# another fixture: pytest's closure is what is checked) belongs to.
FIXTURE_TIERS: dict[str, Tier] = {
    # conftest.py
    "emulator": Tier.INTEGRATION,
    "pubsub": Tier.INTEGRATION,
    "sockdir": Tier.INTEGRATION,
    "shared_dir": Tier.INTEGRATION,
    "daemons": Tier.SYSTEM,
    "offline_daemons": Tier.SYSTEM,  # daemons pointed at no emulator
    # tests/system/test_native.py: an emulator of the test's own
    "private_emulator": Tier.SYSTEM,
    # tests/system/test_faults.py, test_spool_order.py: emulator behind a TCP proxy
    "rig": Tier.SYSTEM,
    # tests/system/test_top_tmux.py: a daemon; tests/system/test_tap.py: an
    # HTTP server in a thread
    "serve": Tier.INTEGRATION,
    # tests/system/test_top_tmux.py
    "tmux": Tier.SYSTEM,
    # tests/system/test_send.py, test_syslog_clients.py: a bound socket
    "receiver": Tier.INTEGRATION,
    # tests/integration/test_dialects.py: UDP sources on an event loop
    "readers": Tier.INTEGRATION,
    # tests/system/test_tls_adc.py: TLS Pub/Sub and token servers
    "long_lived": Tier.SYSTEM,
    "short_lived_first": Tier.SYSTEM,
    # clients/python/tests/test_client_package.py: a built and installed wheel
    "light": Tier.SYSTEM,
}


class MisplacedTest(Exception):
    """A test outside every tier folder, or in a lower tier than its fixtures need."""


def folder_of(relpath: str) -> str | None:
    """The tier folder ``relpath`` (a test file, relative to the repository) is in."""
    parents = {str(parent) for parent in PurePosixPath(relpath).parents}
    for folder in FOLDER_TIERS:
        if folder in parents:
            return folder
    return None


def needed_tier(fixturenames: Iterable[str]) -> tuple[Tier, str | None]:
    """The least tier these fixtures need, and the fixture that needs it."""
    tier, why = Tier.UNIT, None
    for name in fixturenames:
        need = FIXTURE_TIERS.get(name)
        if need is not None and need > tier:
            tier, why = need, name
    return tier, why


def tier_of(relpath: str, fixturenames: Iterable[str]) -> Tier:
    """The tier a test is marked with; MisplacedTest if it cannot be in its folder."""
    folder = folder_of(relpath)
    if folder is None:
        raise MisplacedTest(
            f"{relpath} is in no tier folder; put it in one of {', '.join(FOLDER_TIERS)}"
        )
    need, why = needed_tier(fixturenames)
    tier = FOLDER_TIERS[folder]
    if tier is None:
        return max(need, FLOOR_OF_UNTIERED)
    if need > tier:
        raise MisplacedTest(
            f"{relpath} is in {folder} ({tier.marker}) but requests {why!r}, "
            f"which needs the {need.marker} tier: move it to "
            f"tests/{need.marker}/"
        )
    return tier


class Collected(Protocol):
    """What mark_or_refuse needs of a pytest.Item."""

    @property
    def path(self) -> Path: ...
    @property
    def nodeid(self) -> str: ...
    @property
    def fixturenames(self) -> list[str]: ...
    def add_marker(self, marker: str) -> None: ...


def mark_or_refuse(root: Path, items: Sequence[Collected]) -> None:
    """Mark every item with its tier; pytest.UsageError naming every
    misplaced one (the run stops before any test starts)."""
    misplaced: list[str] = []
    for item in items:
        relpath = item.path.relative_to(root).as_posix()
        try:
            tier = tier_of(relpath, item.fixturenames)
        except MisplacedTest as exc:
            misplaced.append(f"{item.nodeid}: {exc}")
            continue
        item.add_marker(tier.marker)
    if misplaced:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(misplaced))


class TierViolation(AssertionError):
    """A unit test opened a socket or started a process (tests/unit/conftest.py)."""
