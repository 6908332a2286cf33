"""The spool directory's files, opened safely: the daemon may run as root,
so the directory must be its own (owned by its euid, writable by nobody
else, not a symlink), and every name in it is opened relative to the
directory's fd, never through a symlink and never unless it is a regular
file. Startup errors are ConfigError naming --spool-dir."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from ingest.config import ConfigError

# Never through a symlink, never blocking on a FIFO, never a controlling tty.
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


class UnsafeFile(OSError):
    """A name in the spool directory that is not a regular file to use."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # a noun phrase: "a FIFO, not a regular file"


def irregular(mode: int) -> UnsafeFile | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((kind for test, kind in _KINDS if test(mode)), "something")
    return UnsafeFile(f"{kind}, not a regular file")


def open_regular(dir_fd: int, name: str, flags: int) -> int:
    """Open ``name`` in the directory ``dir_fd`` only as a regular file: lstat
    first, so a device or FIFO is never even opened, then open without
    following a symlink or blocking, and fstat what was opened. A file opened
    for writing must have no other name (a hard link to a file elsewhere).
    UnsafeFile otherwise; O_CREAT creates it 0600."""
    try:
        problem = irregular(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        problem = None
    if problem is not None:
        raise problem
    fd = os.open(name, flags | SAFE_FLAGS, 0o600, dir_fd=dir_fd)
    st = os.fstat(fd)
    problem = irregular(st.st_mode)  # replaced between the lstat and the open
    if problem is None and flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
        problem = UnsafeFile("a file with other hard links")
    if problem is not None:
        os.close(fd)
        raise problem
    return fd


def explain(exc: OSError) -> str:
    return exc.reason if isinstance(exc, UnsafeFile) else exc.strerror or str(exc)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_directory(directory: str) -> None:
    """What ``ingest check-config`` can know without creating anything: an
    existing spool directory must pass the checks ``Spool.open`` makes (a
    missing one is created 0700 by ``serve``). ConfigError otherwise."""
    try:
        fd = os.open(directory, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _unusable(directory, exc) from None
    os.close(_trusted(directory, fd))


def open_directory(directory: str) -> int:
    """The spool directory's fd, created 0700 if missing. ConfigError unless it
    is a directory itself (not a symlink), owned by our euid and writable by
    nobody else: whoever can write in it could plant names for us to follow."""
    try:
        try:
            fd = os.open(directory, _DIRECTORY_FLAGS)
        except FileNotFoundError:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(directory, _DIRECTORY_FLAGS)
    except OSError as exc:
        raise _unusable(directory, exc) from None
    return _trusted(directory, fd)


def _unusable(directory: str, exc: OSError) -> ConfigError:
    if os.path.islink(directory):
        return ConfigError("--spool-dir", f"{directory} is a symbolic link")
    return ConfigError("--spool-dir", f"{directory}: cannot use: {exc.strerror}")


def _trusted(directory: str, fd: int) -> int:
    """``fd`` if its directory is ours alone; else close it, ConfigError."""
    st = os.fstat(fd)
    euid = os.geteuid()
    problem = None
    if st.st_uid != euid:
        problem = f"is owned by uid {st.st_uid}, not by uid {euid} that runs ingest"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {st.st_mode & 0o7777:04o}; chmod go-w)"
    if problem is not None:
        os.close(fd)
        raise ConfigError("--spool-dir", f"{directory} {problem}")
    return fd


def probe(dir_fd: int) -> None:
    """Create, write and remove a file under a fresh name (O_EXCL: never
    something planted); OSError when the directory cannot be written."""
    name = f".probe-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def read_all(fd: int, size: int) -> bytes:
    parts, got = [], 0
    while got < size and (part := os.pread(fd, size - got, got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)
