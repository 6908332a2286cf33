"""--unix-credentials and --unix-allow-uid on real sockets, without a daemon:
each message carries its sender's pid, uid and gid as the kernel reports them
(SCM_CREDENTIALS); nothing the sender writes changes them; an allow-list of
uids rejects every other sender (sender_denied) without decoding its
datagrams. Senders are child processes, some run as user nobody (setpriv)."""

from __future__ import annotations

import array
import asyncio
import functools
import grp
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from google.pubsub_v1.types import pubsub as t

from ingest.config import Listener, Settings
from ingest.flows import MessageFlow
from ingest.pipeline.lanes import LaneQueue
from ingest.pipeline.message import MessageBuilder
from ingest.publish.pubsub import encode_data
from ingest.receive.codec import decode_messages
from ingest.receive.receivers import UCRED, Senders
from ingest.receive.sockets import bind_unix
from ingest.receive.sources import DatagramSource
from ingest.receive.wakeup import WAKEUP_MAX_DATAGRAMS
from ingest.stats import Stats
from ingest.wiring import Pipeline

STATIC = {"env": "test"}  # a configured attribute, next to the sender's
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # <asm-generic/socket.h>

# Stdlib only, run with -I -S: the interpreter may not reach the virtualenv's
# packages as another user.
SENDER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.settimeout(10)
for data in sys.argv[2:]:
    sock.sendto(data.encode(), sys.argv[1])
"""

# Claims uid 0 in a credentials record of its own: the kernel checks it.
FORGER = """
import os, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
claim = struct.pack("iII", os.getpid(), 0, 0)
try:
    sock.sendmsg(
        [b'{"forged":true}'],
        [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, claim)],
        0,
        sys.argv[1],
    )
except PermissionError:
    print("refused")
"""

# Claims the pid, uid and gid of its arguments (``self`` for its own pid).
CLAIMANT = """
import os, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
pid = os.getpid() if sys.argv[2] == "self" else int(sys.argv[2])
claim = struct.pack("iII", pid, int(sys.argv[3]), int(sys.argv[4]))
try:
    sock.sendmsg(
        [b'{"claimed":true}'],
        [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, claim)],
        0,
        sys.argv[1],
    )
    print("sent")
except PermissionError:
    print("refused")
"""

# Sends on an inherited socket (one end of a socketpair).
FD_SENDER = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
for i in range(int(sys.argv[2])):
    sock.send(b'{"i":%d}' % i)
"""


def overflow_uid() -> int:
    with open("/proc/sys/kernel/overflowuid") as file:
        return int(file.read())


def nobody() -> tuple[str, ...]:
    """A command prefix that runs the rest as nobody:nogroup, ending with an
    interpreter nobody can run. Skips where there is none."""
    if os.geteuid() != 0:
        pytest.skip("running a sender as nobody needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is missing")
    prefix = (setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    # The virtualenv's may sit under a directory closed to nobody.
    for python in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin")):
        if python is None:
            continue
        probe = [*prefix, python, "-I", "-S", "-c", "import socket"]
        if subprocess.run(probe, capture_output=True, timeout=20, check=False).returncode == 0:
            return (*prefix, python)
    pytest.skip("no Python interpreter that user nobody can run")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop a source reads the time from (reads are called directly)."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def builder_for(stats: Stats) -> MessageBuilder:
    return MessageBuilder(tuple(STATIC.items()), (), stats.attributes_skipped)


def source_on(
    sock: socket.socket,
    path: Path,
    stats: Stats,
    loop: asyncio.AbstractEventLoop,
    *,
    credentials: bool = True,
    allow_uids: Sequence[int] = (),
    adopted: bool = False,
) -> tuple[DatagramSource, LaneQueue]:
    """A source with its builder as the daemon wires it: ``decode`` builds
    with each datagram's sender, which the source learns."""
    builder = builder_for(stats)
    queue = LaneQueue(1_000_000, 1 << 30, stats)
    source = DatagramSource(
        Listener("unix", path=str(path)),
        sock,
        queue,
        stats,
        65_535,
        decode=functools.partial(decode_messages, build=builder.build),
        credentials=credentials,
        allow_uids=allow_uids,
        adopted=adopted,
    )
    source.start(loop)
    return source, queue


def bound_source(
    path: Path,
    stats: Stats,
    loop: asyncio.AbstractEventLoop,
    *,
    credentials: bool = True,
    allow_uids: Sequence[int] = (),
) -> tuple[DatagramSource, LaneQueue]:
    sock = bind_unix(Listener("unix", path=str(path)), 0o666, credentials=credentials)
    return source_on(sock, path, stats, loop, credentials=credentials, allow_uids=allow_uids)


def run_sender(
    source: DatagramSource, path: Path, *datagrams: str, prefix: Sequence[str] = (sys.executable,)
) -> int:
    """Run SENDER in a child process (``prefix``: how to start its Python),
    reading meanwhile: net.unix.max_dgram_qlen may let the kernel hold as
    few as 11 datagrams. Returns the sending process's pid (setpriv execs
    the interpreter: same process)."""
    proc = subprocess.Popen([*prefix, "-I", "-S", "-c", SENDER, str(path), *datagrams])
    while proc.poll() is None:
        source.read()
        time.sleep(0.001)
    source.read_until_empty()
    assert proc.returncode == 0
    return proc.pid


def messages(queue: LaneQueue) -> list[t.PubsubMessage]:
    return [
        t.PubsubMessage.pb().FromString(body)
        for _, chunk in queue.take_all()
        for body in chunk.events
    ]


def sender_of(pid: int, uid: int, gid: int) -> dict[str, str]:
    return {**STATIC, "sender_pid": str(pid), "sender_uid": str(uid), "sender_gid": str(gid)}


def passcred(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED))


def test_messages_carry_the_senders_pid_uid_and_gid_from_the_kernel(
    sockdir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Two processes, two pids (the cache keeps them apart); what a sender
    writes in its JSON is its data, never its identity."""
    stats = Stats()
    path = sockdir / "in.sock"
    source, queue = bound_source(path, stats, loop)
    assert passcred(source.sock)
    forged = '{"sender_uid":"4242","sender_pid":"1"}'
    first = run_sender(source, path, '{"n":1}', forged)
    second = run_sender(source, path, '{"n":2}')
    got = messages(queue)
    assert [m.data for m in got] == [b'{"n":1}', forged.encode(), b'{"n":2}']
    ids = (os.getuid(), os.getgid())  # the children's: inherited from this process
    assert [dict(m.attributes) for m in got] == [
        sender_of(first, *ids),
        sender_of(first, *ids),
        sender_of(second, *ids),
    ]
    assert first != second
    assert sum(stats.rejected.values()) == 0
    source.close()


class NoClient:
    """The pipeline's client is only asked for its topic here: nothing is sent."""

    topic_path = "projects/test/topics/events"


def sent_by_a_child(path: Path, *datagrams: str) -> int:
    """Run SENDER in a child process without reading meanwhile (its
    datagrams wait in the socket); returns its pid."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", SENDER, str(path), *datagrams])
    assert proc.wait(timeout=20) == 0
    return proc.pid


def test_readers_share_the_pipelines_builder_and_each_datagram_keeps_its_sender(
    sockdir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Two unix listeners with credentials, wired as the daemon wires them
    (Pipeline.add_reader), build with the pipeline's one builder: the sender
    comes with each datagram (its wake-up), not with the builder. Datagrams
    of four processes, JSON, syslog and statsd, wait in both sockets and are
    read in one wake-up each: every message carries its own sender's pid."""
    paths = [sockdir / "a.sock", sockdir / "b.sock"]
    listeners = tuple(Listener("unix", path=str(path)) for path in paths)
    settings = Settings(
        project="test",
        topic="events",
        listeners=listeners,
        attributes=tuple(STATIC.items()),
        unix_credentials=True,
    )
    stats = Stats()
    pipeline = Pipeline(settings, stats, NoClient())  # type: ignore[arg-type]
    a, b = (
        pipeline.add_reader(listener, bind_unix(listener, 0o666, credentials=True))
        for listener in listeners
    )
    flow = pipeline.flow
    assert isinstance(flow, MessageFlow)
    assert a.dialects is not None and b.dialects is not None
    assert a.dialects.builder is b.dialects.builder is flow.lanes.builder
    for reader in (a, b):
        reader.start(loop)
    syslog = '<13>1 2026-01-01T00:00:00Z web1 app - - - {"n":2}'
    first = sent_by_a_child(paths[0], '{"n":1}')
    second = sent_by_a_child(paths[0], syslog)
    third = sent_by_a_child(paths[1], "m:3|c")
    fourth = sent_by_a_child(paths[0], '{"n":4}')
    assert a.read() is False  # one wake-up took them all
    assert b.read() is False
    assert stats.datagrams_received[a.label] == 3
    assert stats.datagrams_received[b.label] == 1
    assert sum(stats.rejected.values()) == 0
    got = messages(flow.queue)
    assert [(m.data, m.attributes["sender_pid"]) for m in got] == [
        (b'{"n":1}', str(first)),
        (b'{"n":2}', str(second)),
        (b'{"n":4}', str(fourth)),
        (b'{"metric":"m","value":3,"type":"c"}', str(third)),
    ]
    assert len({first, second, third, fourth}) == 4
    ids = (os.getuid(), os.getgid())
    for m, pid in zip(got, (first, second, fourth, third), strict=True):
        assert {k: v for k, v in m.attributes.items() if not k.startswith("syslog_")} == (
            sender_of(pid, *ids)
        )
    for reader in (a, b):
        reader.close()


def test_a_plain_unix_source_asks_for_no_credentials(
    sockdir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Without credentials the socket never has SO_PASSCRED (the read loop reads
    with the plain recv) and messages carry only the configured attributes."""
    stats = Stats()
    path = sockdir / "in.sock"
    source, queue = bound_source(path, stats, loop, credentials=False)
    assert source.senders is None
    assert not passcred(source.sock)
    run_sender(source, path, '{"n":1}')
    assert [dict(m.attributes) for m in messages(queue)] == [STATIC]
    source.close()


def test_allow_uids_without_credentials_is_refused(
    sockdir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Ignoring it would admit every uid."""
    with pytest.raises(ValueError, match="allow_uids needs credentials"):
        bound_source(sockdir / "in.sock", Stats(), loop, credentials=False, allow_uids=(0,))


def test_an_allow_list_rejects_other_uids_without_decoding_them(
    shared_dir: Path, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """nobody's datagrams are each one datagram and one event, received and
    rejected as sender_denied, never decoded (its invalid JSON is not counted
    invalid); nobody cannot claim uid 0 either; root's pass."""
    as_nobody = nobody()
    stats = Stats()
    path = shared_dir / "in.sock"
    source, queue = bound_source(path, stats, loop, allow_uids=(0,))
    caplog.set_level(logging.WARNING, logger="ingest.receive.receivers")
    denied = ('{"n":1}', "not json", '{"a":1}\n{"b":2}')
    run_sender(source, path, *denied, prefix=as_nobody)
    forger = subprocess.run(
        [*as_nobody, "-I", "-S", "-c", FORGER, str(path)],
        capture_output=True,
        timeout=20,
        check=True,
    )
    assert forger.stdout == b"refused\n"  # the kernel's EPERM: nothing was sent
    root = run_sender(source, path, '{"n":2}', '{"n":3}')
    label = source.label
    assert dict(stats.rejected) == {"sender_denied": len(denied)}
    assert stats.datagrams_received[label] == stats.events_received[label] == len(denied) + 2
    got = messages(queue)
    assert [m.data for m in got] == [b'{"n":2}', b'{"n":3}']
    assert all(dict(m.attributes) == sender_of(root, 0, os.getgid()) for m in got)
    assert "denied a datagram from uid 65534" in caplog.text
    assert "not in --unix-allow-uid" in caplog.text
    source.close()


def test_a_burst_of_denied_senders_ends_the_wake_up(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Like source_denied: WAKEUP_MAX_DATAGRAMS denied datagrams end a wake-up. One
    end of a socketpair is not bound by net.unix.max_dgram_qlen, so a child
    running as nobody can queue them all before the first read."""
    as_nobody = nobody()
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    sender.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20)  # root: past wmem_max
    stats = Stats()
    source, queue = source_on(receiver, tmp_path / "unbound", stats, loop, allow_uids=(0,))
    count = 3 * WAKEUP_MAX_DATAGRAMS
    subprocess.run(
        [*as_nobody, "-I", "-S", "-c", FD_SENDER, str(sender.fileno()), str(count)],
        pass_fds=(sender.fileno(),),
        timeout=20,
        check=True,
    )
    assert source.read() is True  # one burst's worth, then the loop's turn
    assert stats.rejected["sender_denied"] == WAKEUP_MAX_DATAGRAMS
    source.read_until_empty()
    label = source.label
    assert stats.rejected["sender_denied"] == count
    assert stats.events_received[label] == stats.datagrams_received[label] == count
    assert queue.events == 0
    source.close()
    sender.close()


@pytest.mark.parametrize("allow_uids", [(), "overflow"])
def test_datagrams_queued_before_passcred_have_no_sender(
    sockdir: Path, loop: asyncio.AbstractEventLoop, allow_uids: object
) -> None:
    """A datagram sent before SO_PASSCRED was set (a socket systemd created
    without PassCredentials=yes) was never given credentials: the kernel
    reports pid 0 and the overflow uid, which would read as user nobody. It
    is published without sender attributes, and an allow-list denies it --
    even one that admits the overflow uid."""
    uids = (0, overflow_uid()) if allow_uids == "overflow" else ()
    stats = Stats()
    path = sockdir / "in.sock"
    listener = Listener("unix", path=str(path))
    sock = bind_unix(listener, 0o600)  # as systemd would, without PassCredentials=yes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(str(path))
        sender.send(b'{"n":"before"}')
        source, queue = source_on(sock, path, stats, loop, allow_uids=uids, adopted=True)
        assert passcred(source.sock)
        sender.send(b'{"n":"after"}')
    source.read_until_empty()
    got = {m.data: dict(m.attributes) for m in messages(queue)}
    known = sender_of(os.getpid(), os.getuid(), os.getgid())
    if uids:
        assert got == {b'{"n":"after"}': known}
        assert dict(stats.rejected) == {"sender_denied": 1}
    else:
        assert got == {b'{"n":"before"}': STATIC, b'{"n":"after"}': known}
    source.close()


def test_attached_file_descriptors_are_closed_and_the_credentials_kept(
    sockdir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """A sender attaching file descriptors (SCM_RIGHTS) truncates the
    control data (MSG_CTRUNC): the kernel closes them rather than installing
    them in the daemon, and the credentials, written first, are whole."""
    stats = Stats()
    path = sockdir / "in.sock"
    source, queue = bound_source(path, stats, loop)
    read_end, write_end = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        fds = array.array("i", [read_end, write_end] * 8)
        sender.sendmsg([b'{"n":1}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, str(path))
        open_before = len(os.listdir("/proc/self/fd"))
        source.read_until_empty()
        assert len(os.listdir("/proc/self/fd")) == open_before
    os.close(read_end)
    os.close(write_end)
    got = messages(queue)
    assert [dict(m.attributes) for m in got] == [sender_of(os.getpid(), os.getuid(), os.getgid())]
    source.close()


def test_recreated_sockets_pass_credentials(sockdir: Path, loop: asyncio.AbstractEventLoop) -> None:
    """The socket check_path binds after the file vanished gets SO_PASSCRED
    before it can receive."""
    stats = Stats()
    path = sockdir / "in.sock"
    source, queue = bound_source(path, stats, loop)
    old = source.sock
    path.unlink()
    source.check_path(0o666)
    assert source.sock is not old
    assert passcred(source.sock)
    pid = run_sender(source, path, '{"n":1}')
    assert [dict(m.attributes) for m in messages(queue)] == [
        sender_of(pid, os.getuid(), os.getgid())
    ]
    source.close()


def attributes(entries: bytes) -> dict[str, str]:
    return dict(t.PubsubMessage.pb().FromString(encode_data(b"{}") + entries).attributes)


def credentials(pid: int, uid: int, gid: int) -> tuple[int, int, bytes]:
    return (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(pid, uid, gid))


def test_verdicts_on_records_the_kernel_gives_rarely() -> None:
    """Records no local sender produces here: a sender outside the daemon's
    pid namespace (pid 0, a real uid) has no sender_pid; a record cut short,
    or a control message of another kind, is an unknown sender. The cache
    stays bounded."""
    senders = Senders((1000,))
    entries, allowed = senders.learn(credentials(0, 1000, 100))
    assert allowed
    assert attributes(entries) == {"sender_uid": "1000", "sender_gid": "100"}
    cut = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(7, 1000, 100)[:8])
    other = (socket.SOL_SOCKET, socket.SCM_RIGHTS, UCRED.pack(7, 1000, 100))
    for record in (cut, other, None):
        assert senders.learn(record) == (b"", False)
    assert Senders(()).learn(cut) == (b"", True)  # no allow-list: published, anonymous
    assert senders.learn(credentials(7, 1001, 100))[1] is False
    for pid in range(1, 2 * Senders.MAX_CACHED):
        senders.learn(credentials(pid, 1000, 100))
    assert len(senders.verdicts) <= Senders.MAX_CACHED


def claim(source: DatagramSource, path: Path, prefix: Sequence[str], *ids: str) -> str:
    """Run CLAIMANT with ``prefix``; what it printed (sent or refused)."""
    result = subprocess.run(
        [*prefix, "-I", "-S", "-c", CLAIMANT, str(path), *ids],
        capture_output=True,
        timeout=20,
        check=True,
    )
    source.read_until_empty()
    return result.stdout.decode().strip()


def test_who_can_claim_another_identity_is_what_the_docs_say(
    shared_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """The rules docs/concepts/metadata.md states, as the kernel applies
    them: an unprivileged sender can claim neither another uid nor another
    pid; root (CAP_SETUID, CAP_SYS_ADMIN) can claim any, and so passes an
    allow-list it is not on.
    The test is what keeps "who can forge" in the docs true."""
    as_nobody = nobody()
    stats = Stats()
    path = shared_dir / "in.sock"
    source, queue = bound_source(path, stats, loop, allow_uids=(4242,))
    nobody_uid = str(pwd.getpwnam("nobody").pw_uid)
    nogroup_gid = str(grp.getgrnam("nogroup").gr_gid)
    assert claim(source, path, as_nobody, "self", "4242", nogroup_gid) == "refused"
    assert claim(source, path, as_nobody, "1", nobody_uid, nogroup_gid) == "refused"
    assert claim(source, path, (sys.executable,), "1", "4242", "4242") == "sent"
    got = messages(queue)
    assert [m.data for m in got] == [b'{"claimed":true}']
    assert dict(got[0].attributes) == sender_of(1, 4242, 4242)
    assert sum(stats.rejected.values()) == 0
    source.close()
