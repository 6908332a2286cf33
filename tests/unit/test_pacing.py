"""Read pacing (receive/pacing.py): after a light read, the next is on a
timer so that it carries several datagrams; at high rates, and when traffic
stops, the socket is watched as it always was."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.receive.pacing import (
    FEW_DATAGRAMS,
    READ_PAUSE_MAX_S,
    READ_PAUSE_MIN_S,
    ReadPacing,
)


def test_a_light_read_at_a_low_rate_waits_the_longest_pause() -> None:
    pacing = ReadPacing(0.0)
    assert pacing.after(0.0005, 1, False) == READ_PAUSE_MAX_S  # the first datagram
    assert pacing.after(0.0105, 10, False) == READ_PAUSE_MAX_S  # ~1,000 a second


def test_a_read_finding_nothing_watches_the_socket() -> None:
    """Traffic stopped: an idle daemon must not keep waking on a timer."""
    pacing = ReadPacing(0.0)
    assert pacing.after(0.001, 3, False) is not None
    assert pacing.after(0.006, 0, False) is None


def test_a_busy_read_watches_the_socket() -> None:
    pacing = ReadPacing(0.0)
    assert pacing.after(0.001, 256, True) is None  # its budget stopped it
    assert pacing.after(0.002, FEW_DATAGRAMS, False) is None  # read many


def test_a_high_rate_watches_the_socket_though_each_read_is_light() -> None:
    """150,000 a second in reads of 20: a pause would leave hundreds in the
    kernel, so the reads stay immediate."""
    pacing = ReadPacing(0.0)
    now = 0.0
    pauses = []
    for _ in range(2000):
        now += 20 / 150_000
        pauses.append(pacing.after(now, 20, False))
    assert all(pause is None for pause in pauses[10:])


def test_the_pause_shortens_as_the_rate_rises() -> None:
    """At 20,000 a second a read is paced to carry about half FEW_DATAGRAMS,
    and the reads stay paced."""
    pacing = ReadPacing(0.0)
    now = 0.0
    pause: float | None = READ_PAUSE_MIN_S
    for _ in range(200):
        assert pause is not None
        now += pause
        pause = pacing.after(now, max(1, round(20_000 * pause)), False)
    assert pause is not None
    assert READ_PAUSE_MIN_S <= pause < READ_PAUSE_MAX_S
    assert abs(pause * 20_000 - FEW_DATAGRAMS / 2) <= FEW_DATAGRAMS * 0.1


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.floats(0, 0.2), st.integers(0, 300), st.booleans()), max_size=60))
def test_a_pause_is_bounded_and_never_follows_a_busy_or_empty_read(
    reads: list[tuple[float, int, bool]],
) -> None:
    pacing = ReadPacing(0.0)
    now = 0.0
    for gap, datagrams, more in reads:
        now += gap
        pause = pacing.after(now, datagrams, more)
        if more or not datagrams or datagrams >= FEW_DATAGRAMS:
            assert pause is None
        if pause is not None:
            assert READ_PAUSE_MIN_S <= pause <= READ_PAUSE_MAX_S
