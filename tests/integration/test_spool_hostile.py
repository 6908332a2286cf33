"""A hostile or damaged spool directory. The daemon may run as root, so
nobody else may be able to write in the spool directory, and nothing placed
in it (a symlink, a hard link, a FIFO, a directory, a socket, a device, a
huge or truncated file) may redirect a write, hang startup or raise.

In process, no event loop: the spool is state plus files. The same cases
against a real ``ingest serve`` (exit codes, log lines) are in test_faults.py.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.config import ConfigError
from ingest.spool import SET_ASIDE_NAMES, Spool, records
from ingest.stats import Stats
from tests.unit.test_spool import replay_all

VICTIM_BYTES = b"not yours to truncate\n"
SEG0 = "seg-000000000000.spool"
SEG1 = "seg-000000000001.spool"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, links)")


def open_spool(path: Path) -> Spool:
    return Spool.open(str(path), 1 << 20, "roll", Stats())


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_BYTES)
    return path


def make_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def make_directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_bytes(b"x")


def make_socket(path: Path) -> None:
    # Bound by a relative name: the absolute path may exceed sun_path.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(cwd)


def make_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("mknod is not permitted here")


MAKERS: dict[str, Callable[[Path], None]] = {
    "fifo": make_fifo,
    "directory": make_directory,
    "socket": make_socket,
    "device": make_device,
}


# ------------------------------------------------------------ the directory


@root_only
def test_a_directory_owned_by_another_user_is_refused(spool_dir: Path) -> None:
    os.chown(spool_dir, 65534, 65534)
    with pytest.raises(ConfigError, match=rf"--spool-dir: {spool_dir} is owned by uid 65534"):
        open_spool(spool_dir)
    assert not list(spool_dir.iterdir())


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777, 0o720, 0o702], ids=oct)
def test_a_directory_others_may_write_in_is_refused(spool_dir: Path, mode: int) -> None:
    spool_dir.chmod(mode)
    with pytest.raises(ConfigError, match=rf"{spool_dir} is writable by group or others"):
        open_spool(spool_dir)
    assert not list(spool_dir.iterdir())


def test_a_directory_others_may_only_read_is_accepted(spool_dir: Path) -> None:
    spool_dir.chmod(0o755)
    open_spool(spool_dir).close()


def test_a_symlinked_directory_is_refused(spool_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(spool_dir)
    with pytest.raises(ConfigError, match=rf"--spool-dir: {link} is a symbolic link"):
        open_spool(link)
    assert not list(spool_dir.iterdir())


# ------------------------------------------------------- LOCK, cursor, probe


@pytest.mark.parametrize("name", ["LOCK", "cursor"])
def test_a_symlinked_lock_or_cursor_is_refused_and_its_target_untouched(
    spool_dir: Path, victim: Path, name: str
) -> None:
    (spool_dir / name).symlink_to(victim)
    with pytest.raises(ConfigError, match=rf"{spool_dir}/{name} is a symbolic link"):
        open_spool(spool_dir)
    assert victim.read_bytes() == VICTIM_BYTES


@pytest.mark.parametrize("name", ["LOCK", "cursor"])
def test_a_dangling_symlink_creates_nothing(spool_dir: Path, tmp_path: Path, name: str) -> None:
    (spool_dir / name).symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(ConfigError, match="symbolic link"):
        open_spool(spool_dir)
    assert not (tmp_path / "created-through-the-link").exists()


@root_only
@pytest.mark.parametrize("name", ["LOCK", "cursor"])
def test_a_hard_linked_lock_or_cursor_is_refused(spool_dir: Path, victim: Path, name: str) -> None:
    os.link(victim, spool_dir / name)
    with pytest.raises(ConfigError, match=rf"{spool_dir}/{name} is a file with other hard links"):
        open_spool(spool_dir)
    assert victim.read_bytes() == VICTIM_BYTES


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", ["LOCK", "cursor"])
def test_a_lock_or_cursor_that_is_not_a_regular_file_is_refused(
    spool_dir: Path, name: str, kind: str
) -> None:
    MAKERS[kind](spool_dir / name)
    what = {"fifo": "a FIFO", "directory": "a directory"}[kind]
    with pytest.raises(ConfigError, match=rf"{spool_dir}/{name} is {what}, not a regular file"):
        open_spool(spool_dir)


def test_the_write_probes_never_follow_a_symlink(spool_dir: Path, victim: Path) -> None:
    for name in (".probe", f".probe-{os.getpid()}"):  # the names earlier versions used
        (spool_dir / name).symlink_to(victim)
    spool = open_spool(spool_dir)
    spool.problem = "spool write failed: for the test"  # makes recheck() probe
    spool.recheck()
    assert spool.problem is None
    spool.close()
    assert victim.read_bytes() == VICTIM_BYTES
    planted = sorted(p for p in os.listdir(spool_dir) if p.startswith(".probe"))
    assert planted == [".probe", f".probe-{os.getpid()}"]  # and nothing of its own left


# ----------------------------------------------------------------- segments


def spool_with_one_record(spool_dir: Path) -> list[bytes]:
    """SEG0 holding three events; returns them."""
    events = [b'{"i":1}', b'{"i":2}', b'{"i":3}']
    spool = open_spool(spool_dir)
    spool.append(events)
    spool.close()
    assert os.listdir(spool_dir).count(SEG0) == 1
    return events


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_segment_that_is_not_a_regular_file_is_set_aside(spool_dir: Path, kind: str) -> None:
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    events = spool_with_one_record(spool_dir)
    MAKERS[kind](spool_dir / SEG1)
    spool = open_spool(spool_dir)  # a FIFO here used to block open() for ever
    assert (spool.events, spool.corrupt_records) == (3, 1)
    aside = os.lstat(spool_dir / f"{SEG1}.corrupt")
    assert not stat.S_ISREG(aside.st_mode)
    assert replay_all(spool) == events
    spool.append([b"{}"])  # a new segment does not collide with the one set aside
    assert replay_all(spool) == [b"{}"]
    spool.close()


def test_a_symlinked_segment_is_set_aside_without_reading_its_target(
    spool_dir: Path, tmp_path: Path
) -> None:
    spool_with_one_record(spool_dir)
    target = tmp_path / "elsewhere.spool"
    os.rename(spool_dir / SEG0, target)  # a valid segment, reachable only through the link
    (spool_dir / SEG1).symlink_to(target)
    content = target.read_bytes()
    spool = open_spool(spool_dir)
    assert (spool.events, spool.corrupt_records) == (0, 1)
    assert os.readlink(spool_dir / f"{SEG1}.corrupt") == str(target)
    spool.close()
    assert target.read_bytes() == content  # still there, and never replayed


@pytest.mark.timeout(20)
def test_a_fifo_in_place_of_an_already_replayed_segment_is_set_aside(spool_dir: Path) -> None:
    spool = open_spool(spool_dir)
    spool.append([b"old"])
    spool._close_active()  # as at a roll: the next append starts SEG1
    spool.append([b"new"])
    assert replay_all(spool)[:1] == [b"old"]
    spool.close()
    assert not (spool_dir / SEG0).exists()  # replayed: the cursor is on SEG1 now
    make_fifo(spool_dir / SEG0)
    again = open_spool(spool_dir)
    assert (again.events, again.corrupt_records) == (0, 1)
    assert stat.S_ISFIFO(os.lstat(spool_dir / f"{SEG0}.corrupt").st_mode)
    again.close()


def test_a_segment_larger_than_any_the_format_allows_is_set_aside_unread(
    spool_dir: Path,
) -> None:
    path = spool_dir / SEG0
    with open(path, "wb") as fh:  # sparse: no disk, and it must not be read into memory
        fh.write(records.HEADER)
        fh.truncate(records.MAX_SEGMENT_BYTES + 1)
    spool = open_spool(spool_dir)
    assert (spool.events, spool.corrupt_records) == (0, 1)
    assert (spool_dir / f"{SEG0}.corrupt").stat().st_size == records.MAX_SEGMENT_BYTES + 1
    spool.close()


@pytest.mark.parametrize(
    ("keep", "corrupt", "left"),
    [
        (0, 0, []),  # created, then a crash before its header: nothing lost, removed
        (5, 1, [f"{SEG0}.corrupt"]),  # half a header: not ours to judge, set aside
        (records.HEADER_BYTES, 0, []),  # a header and no record yet: removed
        (records.HEADER_BYTES + 7, 1, []),  # a torn first record: counted, removed
    ],
)
def test_a_truncated_segment(spool_dir: Path, keep: int, corrupt: int, left: list[str]) -> None:
    spool_with_one_record(spool_dir)
    os.truncate(spool_dir / SEG0, keep)
    spool = open_spool(spool_dir)
    assert (spool.events, spool.corrupt_records) == (0, corrupt)
    assert sorted(p for p in os.listdir(spool_dir) if p.startswith("seg-")) == left
    spool.close()


@pytest.mark.parametrize("earlier", ["file", "directory"])
def test_setting_aside_never_replaces_what_was_set_aside_before(
    spool_dir: Path, earlier: str
) -> None:
    (spool_dir / SEG0).write_bytes(b"not a spool segment")
    first = spool_dir / f"{SEG0}.corrupt"
    if earlier == "file":
        first.write_bytes(b"set aside by an earlier run")
    else:
        make_directory(first)
    spool = open_spool(spool_dir)
    assert spool.corrupt_records == 1
    assert (spool_dir / f"{SEG0}.corrupt.1").read_bytes() == b"not a spool segment"
    if earlier == "file":
        assert first.read_bytes() == b"set aside by an earlier run"
    else:
        assert (first / "inside").read_bytes() == b"x"
    spool.close()


def test_when_every_name_to_set_aside_under_is_taken_it_is_left_in_place(
    spool_dir: Path,
) -> None:
    (spool_dir / SEG0).write_bytes(b"not a spool segment")
    taken = [f"{SEG0}.corrupt"] + [f"{SEG0}.corrupt.{n}" for n in range(1, SET_ASIDE_NAMES)]
    for name in taken:
        (spool_dir / name).write_bytes(name.encode())
    spool = open_spool(spool_dir)
    assert (spool.events, spool.corrupt_records) == (0, 1)
    assert (spool_dir / SEG0).read_bytes() == b"not a spool segment"
    assert all((spool_dir / name).read_bytes() == name.encode() for name in taken)
    spool.append([b"{}"])  # the next segment number is past it
    assert replay_all(spool) == [b"{}"]
    spool.close()
