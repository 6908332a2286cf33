"""The suite's fixtures and its one hook; tests/helpers.py is its library.

At the repository's root so that both tests/ and clients/python/tests/ get
them. The emulator is started once per test session; emulator tests skip
(with the reason) only where it is not installed; on our machines and in CI
it is, and they run.

The hook marks every test with its tier (tests/tiers.py) and stops the run
before any test starts if one sits in a lower tier than its fixtures need.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PubSubNames, short_dir
from tests.tiers import mark_or_refuse
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator, launcher_path

_counter = itertools.count()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    if launcher_path() is None:
        pytest.skip(
            "the Google Pub/Sub emulator (google-cloud-cli-pubsub-emulator) is not installed"
        )
    with Emulator() as emu:
        yield emu


@pytest.fixture
def pubsub(emulator: Emulator) -> PubSubNames:
    """A fresh topic with a subscription (created first: a message published
    to a topic without one is gone)."""
    n = next(_counter)
    project = "ingest-test"
    topic_id = f"events-{n}"
    names = PubSubNames(
        project,
        topic_id,
        f"projects/{project}/topics/{topic_id}",
        f"projects/{project}/subscriptions/sub-{n}",
    )
    emulator.create_topic(names.topic)
    emulator.create_subscription(names.subscription, names.topic)
    return names


@pytest.fixture
def daemons(tmp_path: Path, emulator: Emulator) -> Iterator[Daemons]:
    """``ingest serve`` processes pointed at the session's emulator; every one
    still running is killed at teardown."""
    manager = Daemons(tmp_path, emulator.host)
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def offline_daemons(tmp_path: Path) -> Iterator[Daemons]:
    """``ingest serve`` processes pointed at no emulator: for startup errors,
    which fail before Pub/Sub is contacted, and for tests that give each
    daemon a Pub/Sub of their own (behind a proxy)."""
    manager = Daemons(tmp_path, None)
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def sockdir(tmp_path: Path) -> Iterator[Path]:
    """A directory short enough for unix socket paths (sun_path is 108 bytes)."""
    with short_dir(tmp_path) as path:
        yield path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A socket directory other users can reach (pytest's own is mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ingest-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_or_refuse(config.rootpath, items)
