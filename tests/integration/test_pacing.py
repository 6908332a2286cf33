"""Read pacing's loop side (receive/pacing.PacedWatch) on real sockets:
everything sent is read, within the pause bound, and a stop leaves the
socket to whoever reads next."""

from __future__ import annotations

import asyncio
import socket

from ingest.receive.pacing import READ_PAUSE_MAX_S, PacedWatch

DEADLINE_S = 5.0


def test_paced_watch_reads_everything_sent_within_the_pause_bound() -> None:
    """A datagram alone, then a stream: each is read within the longest pause
    (with the loop's slack), nothing is left unread, and once the traffic
    stops the socket is watched again rather than read on a timer."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(f"\0ingest-test-pacing-{id(receiver)}")
        sender.connect(receiver.getsockname())
        receiver.setblocking(False)
        got: list[bytes] = []
        arrived = asyncio.Event()

        def read() -> tuple[int, bool]:
            count = 0
            while True:
                try:
                    got.append(receiver.recv(64))
                except BlockingIOError:
                    break
                count += 1
            if count:
                arrived.set()
            return count, False

        watch = PacedWatch(loop, receiver.fileno(), read)
        try:
            for n in range(20):
                arrived.clear()
                sender.send(b"%d" % n)
                async with asyncio.timeout(DEADLINE_S):
                    await arrived.wait()
                await asyncio.sleep(0.001)
            assert got == [b"%d" % n for n in range(20)]
            async with asyncio.timeout(DEADLINE_S):
                while watch.timed:  # noqa: ASYNC110 -- a poll with a deadline
                    await asyncio.sleep(READ_PAUSE_MAX_S)
        finally:
            watch.stop()
            sender.close()
            receiver.close()

    asyncio.run(main())


def test_stop_cancels_a_pending_read() -> None:
    """Stopped while paused: the timer must not watch the fd again (a
    reload's new reader owns it by then)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)
        reads = 0

        def read() -> tuple[int, bool]:
            nonlocal reads
            reads += 1
            try:
                receiver.recv(64)
            except BlockingIOError:
                return 0, False
            return 1, False

        watch = PacedWatch(loop, receiver.fileno(), read)
        sender.send(b"x")
        async with asyncio.timeout(DEADLINE_S):
            while not watch.timed:  # noqa: ASYNC110 -- a poll with a deadline
                await asyncio.sleep(0)
        watch.stop()
        sender.send(b"y")
        await asyncio.sleep(READ_PAUSE_MAX_S * 4)
        assert reads == 1
        assert receiver.recv(64) == b"y"  # still there for whoever reads next
        sender.close()
        receiver.close()

    asyncio.run(main())


def test_a_read_that_raises_on_the_timer_leaves_the_socket_watched() -> None:
    """As a watched socket whose read raised is read again, so is one read
    on the timer: it must not be left neither watched nor timed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)
        calls = 0
        got: list[bytes] = []

        def read() -> tuple[int, bool]:
            nonlocal calls
            calls += 1
            if calls == 2:  # the first read on the timer
                raise RuntimeError("a bug in the drain")
            count = 0
            while True:
                try:
                    got.append(receiver.recv(64))
                except BlockingIOError:
                    return count, False
                count += 1

        watch = PacedWatch(loop, receiver.fileno(), read)
        try:
            sender.send(b"a")
            async with asyncio.timeout(DEADLINE_S):
                while calls < 2:  # noqa: ASYNC110 -- a poll with a deadline
                    await asyncio.sleep(0.001)
            sender.send(b"b")
            async with asyncio.timeout(DEADLINE_S):
                while b"b" not in got:  # noqa: ASYNC110 -- a poll with a deadline
                    await asyncio.sleep(0.001)
            assert got == [b"a", b"b"]
            assert [type(error) for error in errors] == [RuntimeError]
        finally:
            watch.stop()
            sender.close()
            receiver.close()

    asyncio.run(main())
