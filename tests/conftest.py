"""Shared fixtures: the real Pub/Sub emulator, started once per test session.

Emulator tests skip (with the reason) only where the emulator is not
installed; on our machines and in CI it is, and they run.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import short_dir
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


@dataclass(frozen=True)
class PubSubNames:
    project: str
    topic_id: str
    topic: str  # projects/P/topics/T
    subscription: str  # projects/P/subscriptions/S


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


def another_topic(
    emulator: Emulator, names: PubSubNames, suffix: str, *, ordered: bool = False
) -> PubSubNames:
    """A topic with a subscription (``ordered``: with message ordering), in
    the same project, named after ``names``'."""
    other = PubSubNames(
        names.project,
        f"{names.topic_id}-{suffix}",
        f"{names.topic}-{suffix}",
        f"{names.subscription}-{suffix}",
    )
    emulator.create_topic(other.topic)
    emulator.create_subscription(other.subscription, other.topic, ordered=ordered)
    return other
