"""ingest.receive.gelf: recognition, bounded decompression and chunk reassembly, on
real bytes: zlib as graypy/pygelf send it (``zlib.compress(json)``), gzip as
Docker's gelf driver does, chunked as graypy's ChunkedGELF does."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import time
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.receive import gelf
from ingest.receive.gelf import GelfError, Reassembler, decompress, kind, unwrap

MIB = 1 << 20
WAN_CHUNK = 1420  # graypy's default chunk size
SENDER = ("192.0.2.10", 40001)
OTHER = ("192.0.2.11", 40002)


def record(i: int = 0, extra: int = 0) -> bytes:
    """A GELF JSON record as graypy builds it (compact separators); ``extra``
    bytes of incompressible text make it as large as a test needs."""
    fields = {
        "version": "1.0",
        "host": "web-1",
        "short_message": f"request {i} done",
        "timestamp": 1700000000.5 + i,
        "level": 6,
        "facility": "app",
        "_trace": random.Random(i).randbytes(extra // 2).hex(),
    }
    return json.dumps(fields, separators=(",", ":")).encode()


def graypy_chunks(frame: bytes, size: int = WAN_CHUNK, msg_id: bytes | None = None) -> list[bytes]:
    """The frame split as graypy's ChunkedGELF does: ceil(len / size) slices,
    each behind 1e 0f, an 8-byte id, the sequence number and the count."""
    msg_id = os.urandom(8) if msg_id is None else msg_id
    count = -(-len(frame) // size)
    return [
        b"\x1e\x0f" + msg_id + bytes((seq, count)) + frame[seq * size : (seq + 1) * size]
        for seq in range(count)
    ]


def chunk(msg_id: bytes, seq: int, count: int, part: bytes = b"") -> bytes:
    return b"\x1e\x0f" + msg_id + bytes((seq, count)) + part


def accounted(r: Reassembler) -> int:
    """Messages that have ended: completed or abandoned."""
    return r.completed + sum(r.abandoned.values())


def zero_bomb(wbits: int, mebibytes: int) -> bytes:
    """A valid zlib (wbits 15) or gzip (31) stream of ``mebibytes`` MiB of
    zeros, built without compressing them all: after Z_FULL_FLUSH each MiB
    compresses to the same byte-aligned segment, so the segment is repeated
    and only the trailer is computed (adler32 of n zeros is n << 16 | 1)."""
    block = bytes(MIB)
    deflater = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    segment = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    assert first.endswith(segment)
    header = first[: len(first) - len(segment)]
    end = deflater.flush()  # the final empty block, then a trailer for 2 MiB
    size = mebibytes * MIB
    if wbits == zlib.MAX_WBITS:
        trailer = (((size % 65521) << 16) | 1).to_bytes(4, "big")
    else:
        crc = 0
        for _ in range(mebibytes):
            crc = zlib.crc32(block, crc)
        trailer = crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little")
    return header + segment * mebibytes + end[: -len(trailer)] + trailer


# --- kind ---------------------------------------------------------------------


def test_kind_recognises_what_senders_send() -> None:
    body = record()
    for level in range(10):  # FLG 01, 5e, 9c, da: every level zlib writes
        assert kind(zlib.compress(body, level)) == "zlib"
    assert kind(gzip.compress(body)) == "gzip"
    assert kind(graypy_chunks(zlib.compress(record(extra=4000)))[0]) == "chunk"
    assert kind(body) is None
    assert kind(b"") is None
    assert kind(b"x") is None
    assert kind(b"\x1e") is None


def test_kind_statsd_x_lines_are_not_zlib() -> None:
    for line in (b"x.y:1|c", b"x:1|c", b"xyz.count:5|g", b"x-requests:3|ms", b"x_y:1|c"):
        assert kind(line) is None
    # Exhaustively: after 0x78, only a valid header without a preset dictionary.
    zlib_second = {b for b in range(256) if kind(bytes((0x78, b))) == "zlib"}
    assert zlib_second == {0x01, 0x5E, 0x9C, 0xDA}
    assert kind(b"\x1f\x8c") is None
    assert kind(b"\x1e\x0e") is None


# --- decompress / unwrap ------------------------------------------------------


def test_zlib_round_trip_as_graypy_sends() -> None:
    body = record(1, extra=3000)
    assert decompress(zlib.compress(body), len(body)) == body
    assert unwrap(zlib.compress(body), 10 * len(body)) == body


def test_gzip_round_trip_as_docker_sends() -> None:
    body = record(2, extra=3000)
    assert decompress(gzip.compress(body), len(body)) == body
    assert unwrap(gzip.compress(body, mtime=0), 10 * len(body)) == body


def test_unwrap_passes_plain_json_through_within_the_bound() -> None:
    body = record(3)
    assert unwrap(body, len(body)) is body
    with pytest.raises(GelfError) as err:
        unwrap(body, len(body) - 1)
    assert err.value.reason == "too_large"


def test_decompress_limit_is_exact() -> None:
    body = record(4, extra=500)
    assert decompress(zlib.compress(body), len(body)) == body
    for payload in (zlib.compress(body), gzip.compress(body)):
        with pytest.raises(GelfError) as err:
            decompress(payload, len(body) - 1)
        assert err.value.reason == "too_large"
    assert decompress(zlib.compress(b""), 0) == b""
    with pytest.raises(ValueError):
        decompress(zlib.compress(b""), -1)  # zlib would read max_length 0 as "no limit"


def test_bomb_builder_makes_valid_streams() -> None:
    for wbits in (zlib.MAX_WBITS, 16 + zlib.MAX_WBITS):
        assert decompress(zero_bomb(wbits, 3), 3 * MIB) == bytes(3 * MIB)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("wbits", "mebibytes"), [(zlib.MAX_WBITS, 1024), (31, 100)])
def test_decompression_bomb_is_refused_small_and_fast(wbits: int, mebibytes: int) -> None:
    bomb = zero_bomb(wbits, mebibytes)  # 1 GiB as zlib, 100 MiB as gzip
    assert len(bomb) < mebibytes * 1100  # about 1/1000 of what it inflates to
    limit = MIB
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(GelfError) as err:
            unwrap(bomb, limit)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "too_large"
    assert peak < 8 * limit  # not the gigabyte: a few output buffers of ~limit
    assert elapsed < 2.0  # about 1 MiB of inflating (milliseconds), not 1 GiB


@pytest.mark.timeout(60)
def test_chunked_bomb_reassembles_then_is_refused() -> None:
    bomb = zero_bomb(31, 100)
    chunks = graypy_chunks(bomb)
    assert 1 < len(chunks) <= 128
    r = Reassembler(max_pending_bytes=4 * MIB, max_message_bytes=MIB)
    payload = None
    for c in chunks:
        payload = r.add(c, SENDER, 0.0)
    assert payload == bomb  # reassembly works on compressed bytes only
    with pytest.raises(GelfError) as err:
        unwrap(payload, MIB)
    assert err.value.reason == "too_large"


def test_truncated_streams_are_invalid() -> None:
    body = record(5, extra=200)
    for payload in (zlib.compress(body), gzip.compress(body)):
        for cut in range(2, len(payload)):
            with pytest.raises(GelfError) as err:
                decompress(payload[:cut], 10 * len(body))
            assert err.value.reason == "invalid_gelf", cut


def test_corrupt_streams_never_inflate_to_wrong_bytes() -> None:
    """Every single-bit flip is refused as invalid_gelf, or, for the few bits
    no check covers (gzip's MTIME, XFL, OS and FTEXT, deflate's padding after
    the last block), inflates to the very same bytes."""
    body = record(6, extra=200)
    for payload in (zlib.compress(body), gzip.compress(body)):
        refused = 0
        for bit in range(8 * len(payload)):
            i = bit // 8
            bad = payload[:i] + bytes((payload[i] ^ (1 << bit % 8),)) + payload[i + 1 :]
            try:
                out = decompress(bad, 10 * len(body))
            except GelfError as err:
                assert err.reason == "invalid_gelf"
                refused += 1
            else:
                assert out == body
        assert refused > 0.9 * 8 * len(payload)


def test_trailing_garbage_and_foreign_payloads_are_invalid() -> None:
    body = record(7)
    cases = [
        zlib.compress(body) + b"\x00",
        gzip.compress(body) + b"junk",
        gzip.compress(body) + gzip.compress(body),  # a second member: not one message
        body,  # plain JSON is not compressed
        b"x.y:1|c",
        b"\x78\x9c",  # a header and nothing else
    ]
    for payload in cases:
        with pytest.raises(GelfError) as err:
            decompress(payload, 10 * len(body))
        assert err.value.reason == "invalid_gelf"


# --- Reassembler: completion --------------------------------------------------


def test_graypy_chunked_zlib_message_completes_on_its_last_chunk() -> None:
    body = record(8, extra=12000)
    frame = zlib.compress(body)
    chunks = graypy_chunks(frame)
    assert len(chunks) >= 3
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    results = [r.add(c, SENDER, 1.0) for c in chunks]
    assert results == [None] * (len(chunks) - 1) + [frame]
    assert unwrap(frame, MIB) == body
    assert r.completed == 1
    assert (r.pending_messages, r.pending_bytes) == (0, 0)
    assert not r.abandoned and not r.ignored


def test_docker_chunked_gzip_message_completes() -> None:
    body = record(9, extra=4000)
    frame = gzip.compress(body)
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    out = [r.add(c, SENDER, 1.0) for c in reversed(graypy_chunks(frame))]
    assert out[-1] is not None and unwrap(out[-1], MIB) == body


def test_uncompressed_chunked_json_unwraps_as_is() -> None:
    body = record(10, extra=3000)
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    out = [r.add(c, SENDER, 1.0) for c in graypy_chunks(body)]
    assert out[-1] == body and unwrap(body, MIB) == body


def test_single_chunk_message_completes_at_once_and_leaves_no_trace() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    body = record(11)
    msg_id = b"\x00" * 8  # a client reusing its id for every small record
    for _ in range(3):
        assert r.add(chunk(msg_id, 0, 1, body), SENDER, 1.0) == body
    assert r.completed == 3
    assert (r.pending_messages, r.pending_bytes) == (0, 0)
    assert not r.ignored


@settings(max_examples=150, deadline=None)
@given(data=st.data(), count=st.integers(2, 40), size=st.integers(1, 50))
def test_any_permutation_completes_to_the_same_payload(
    data: st.DataObject, count: int, size: int
) -> None:
    frame = random.Random(count * 100 + size).randbytes(count * size - size // 2)
    chunks = graypy_chunks(frame, size)
    assert len(chunks) == count
    order = data.draw(st.permutations(range(count)))
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    out = [r.add(chunks[i], SENDER, 0.0) for i in order]
    assert out == [None] * (count - 1) + [frame]
    assert (r.completed, r.pending_messages, r.pending_bytes) == (1, 0, 0)


def test_128_chunks_complete_129_are_refused() -> None:
    r = Reassembler(max_pending_bytes=4 * MIB, max_message_bytes=4 * MIB)
    frame = random.Random(12).randbytes(128 * 100)
    out = [r.add(c, SENDER, 0.0) for c in graypy_chunks(frame, 100)]
    assert out[-1] == frame and r.completed == 1
    too_many = graypy_chunks(frame + b"!", 100)  # graypy sends 129 when asked to
    assert len(too_many) == 129
    assert all(r.add(c, SENDER, 0.0) is None for c in too_many)
    # One message abandoned; its other 128 chunks are strays of it, not messages.
    assert r.abandoned == Counter({"gelf_too_many_chunks": 1})
    assert r.ignored == Counter({"gelf_late_chunk": 128})
    assert r.pending_messages == 0


def test_max_chunks_is_configurable() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB, max_chunks=4)
    assert r.add(chunk(b"a" * 8, 0, 5, b"x"), SENDER, 0.0) is None
    assert r.abandoned == Counter({"gelf_too_many_chunks": 1})


# --- Reassembler: anomalies ---------------------------------------------------


def test_duplicate_and_late_chunks_are_ignored_datagrams() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    c0, c1, c2 = graypy_chunks(b"abcdefghi", 3, b"m" * 8)
    assert r.add(c0, SENDER, 0.0) is None
    assert r.add(c0, SENDER, 0.1) is None  # duplicated in the network
    assert r.add(c2, SENDER, 0.2) is None
    assert r.add(c1, SENDER, 0.3) == b"abcdefghi"
    assert r.add(c1, SENDER, 0.4) is None  # after completion: late
    assert r.completed == 1
    assert not r.abandoned
    assert r.ignored == Counter({"gelf_duplicate_chunk": 1, "gelf_late_chunk": 1})


def test_invalid_headers_end_a_message_once() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    a, b, c, d = b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8
    r.add(chunk(a, 3, 3, b"x"), SENDER, 0.0)  # seq >= count: a new message ends
    r.add(chunk(a, 0, 3, b"x"), SENDER, 0.0)  # its other chunks are strays
    r.add(chunk(b, 0, 0), SENDER, 0.0)  # count 0
    r.add(chunk(c, 0, 3, b"x"), SENDER, 0.0)  # pending...
    r.add(chunk(c, 7, 3, b"x"), SENDER, 0.0)  # ...ended by a bad sequence number
    r.add(chunk(d, 0, 3, b"x"), SENDER, 0.0)  # pending...
    r.add(chunk(d, 1, 4, b"x"), SENDER, 0.0)  # ...ended by a count unlike its own
    r.add(b"\x1e\x0f" + a, SENDER, 0.0)  # too short for a header: a message of its own
    r.add(b"\x1e\x0f", SENDER, 0.0)
    assert r.abandoned == Counter({"gelf_invalid_chunk": 6})
    assert r.ignored == Counter({"gelf_late_chunk": 1})
    assert r.pending_messages == 0 and r.pending_bytes == 0


def test_two_senders_with_the_same_id_do_not_mix() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    msg_id = b"\x01" * 8
    mine = graypy_chunks(b"A" * 30, 10, msg_id)
    theirs = graypy_chunks(b"B" * 40, 10, msg_id)
    out = []
    for pair in zip(mine, theirs[:3], strict=True):
        out.append(r.add(pair[0], SENDER, 0.0))
        out.append(r.add(pair[1], OTHER, 0.0))
    assert out == [None] * 4 + [b"A" * 30, None]
    assert r.add(theirs[3], OTHER, 0.0) == b"B" * 40
    assert r.completed == 2 and not r.abandoned and not r.ignored


def test_message_over_max_message_bytes_is_abandoned_too_large() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=25)
    chunks = graypy_chunks(b"z" * 30, 10, b"t" * 8)
    assert [r.add(c, SENDER, 0.0) for c in chunks] == [None] * 3  # the third passes 25
    assert r.abandoned == Counter({"too_large": 1})
    assert r.add(chunks[0], SENDER, 0.0) is None
    assert r.ignored == Counter({"gelf_late_chunk": 1})
    assert r.add(chunk(b"u" * 8, 0, 1, b"y" * 26), SENDER, 0.0) is None  # single chunk
    assert r.add(chunk(b"v" * 8, 1, 2, b"y" * 26), SENDER, 0.0) is None  # first chunk seen
    assert r.abandoned == Counter({"too_large": 3})
    assert r.pending_bytes == 0


# --- Reassembler: time --------------------------------------------------------


def test_chunks_must_arrive_within_the_timeout_of_the_first() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB, timeout_s=5.0)
    fast = graypy_chunks(b"f" * 20, 10, b"f" * 8)
    slow = graypy_chunks(b"s" * 20, 10, b"s" * 8)
    assert r.add(fast[0], SENDER, 100.0) is None
    assert r.add(slow[0], SENDER, 100.0) is None
    assert r.add(fast[1], SENDER, 104.999) == b"f" * 20
    assert r.expire(104.999) == 0
    assert r.pending_messages == 1
    assert r.add(slow[1], SENDER, 105.0) is None  # add() expires it first: now late
    assert r.abandoned == Counter({"gelf_incomplete": 1})
    assert r.ignored == Counter({"gelf_late_chunk": 1})
    assert (r.pending_messages, r.pending_bytes) == (0, 0)


def test_expire_counts_and_frees() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB)
    for i in range(10):
        r.add(chunk(i.to_bytes(8, "big"), 0, 2, b"p" * 100), SENDER, i / 2)
    assert r.pending_messages == 10 and r.pending_bytes > 1000
    assert r.expire(4.9) == 0
    assert r.expire(6.0) == 3  # started at 0, 0.5, 1
    assert r.expire(math.inf) == 7  # at shutdown: everything still pending
    assert r.abandoned == Counter({"gelf_incomplete": 10})
    assert (r.pending_messages, r.pending_bytes) == (0, 0)


def test_ended_messages_are_remembered_for_the_timeout_only() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB, timeout_s=5.0)
    c0, c1 = graypy_chunks(b"x" * 20, 10, b"r" * 8)
    r.add(c0, SENDER, 0.0)
    assert r.add(c1, SENDER, 1.0) == b"x" * 20
    r.add(c1, SENDER, 5.9)  # within 5 s of the end: a stray
    assert r.ignored == Counter({"gelf_late_chunk": 1})
    r.add(c1, SENDER, 6.0)  # forgotten: a new message, never completed
    r.expire(math.inf)
    assert r.abandoned == Counter({"gelf_incomplete": 1})
    assert accounted(r) == 2


def test_memory_of_ended_messages_is_bounded() -> None:
    r = Reassembler(max_pending_bytes=MIB, max_message_bytes=MIB, max_finished=2)
    messages = [graypy_chunks(b"y" * 20, 10, bytes([i]) * 8) for i in range(3)]
    for c0, c1 in messages:
        r.add(c0, SENDER, 0.0)
        assert r.add(c1, SENDER, 0.0) is not None
    r.add(messages[2][1], SENDER, 0.1)  # remembered: a stray
    r.add(messages[0][1], SENDER, 0.1)  # forgotten early: starts a message
    assert r.ignored == Counter({"gelf_late_chunk": 1})
    assert r.pending_messages == 1
    r.expire(math.inf)
    assert accounted(r) == 4


# --- Reassembler: the memory bound --------------------------------------------


def test_pending_bytes_bound_holds_under_a_flood_and_evicts_the_oldest() -> None:
    bound = 64 * 1024
    r = Reassembler(max_pending_bytes=bound, max_message_bytes=MIB)
    legit = graypy_chunks(record(13, extra=2500), 1000, b"L" * 8)
    assert len(legit) == 3
    flood = 5000
    now = 0.0
    assert r.add(legit[0], SENDER, now) is None
    for i in range(flood):  # first chunks of messages that never complete
        now += 0.0001
        r.add(chunk(i.to_bytes(8, "big"), 0, 3, b"j" * 500), OTHER, now)
        assert r.pending_bytes <= bound
        if i == 1000:  # the legitimate message, too slow: evicted as the oldest
            assert r.add(legit[1], SENDER, now) is None
            assert r.add(legit[2], SENDER, now) is None
    assert r.ignored == Counter({"gelf_late_chunk": 2})
    assert r.abandoned["gelf_pending_full"] == flood + 1 - r.pending_messages
    # A message sent at once completes in the middle of the flood.
    fresh = graypy_chunks(record(14, extra=2500), 1000, b"F" * 8)
    assert r.add(fresh[0], SENDER, now) is None
    r.add(chunk(b"\xff" * 8, 0, 3, b"j" * 500), OTHER, now)
    assert r.add(fresh[1], SENDER, now) is None
    assert r.add(fresh[2], SENDER, now) == b"".join(c[12:] for c in fresh)
    r.expire(math.inf)
    assert r.completed == 1
    assert sum(r.abandoned.values()) == flood + 2  # the junk, the last junk, the slow one
    assert (r.pending_messages, r.pending_bytes) == (0, 0)


def test_a_chunk_evicts_older_messages_never_its_own() -> None:
    r = Reassembler(max_pending_bytes=2900, max_message_bytes=MIB)
    own = graypy_chunks(b"o" * 1200, 400, b"O" * 8)
    r.add(own[0], SENDER, 0.0)  # the oldest
    r.add(chunk(b"n" * 8, 0, 2, b"n" * 400), OTHER, 1.0)
    r.add(chunk(b"m" * 8, 0, 2, b"m" * 400), OTHER, 2.0)
    assert r.pending_messages == 3
    r.add(own[1], SENDER, 3.0)  # needs room: evicts n, the oldest other one
    assert r.abandoned == Counter({"gelf_pending_full": 1})
    assert r.pending_messages == 2
    assert r.add(own[2], SENDER, 3.0) == b"o" * 1200
    assert r.pending_bytes <= 2900


def test_the_completing_chunk_needs_no_room() -> None:
    r = Reassembler(max_pending_bytes=1000, max_message_bytes=MIB)
    c0, c1 = graypy_chunks(b"q" * 1000, 500, b"Q" * 8)
    r.add(c0, SENDER, 0.0)
    assert r.pending_bytes + 500 > 1000
    assert r.add(c1, SENDER, 0.0) == b"q" * 1000
    assert not r.abandoned


def test_a_message_that_cannot_fit_alone_is_refused_itself() -> None:
    r = Reassembler(max_pending_bytes=2000, max_message_bytes=MIB)
    r.add(chunk(b"k" * 8, 0, 2, b"k" * 10), OTHER, 0.0)
    r.add(chunk(b"h" * 8, 0, 3, b"h" * 1900), SENDER, 0.0)  # new, too big alone
    assert r.abandoned == Counter({"gelf_pending_full": 1})
    assert r.pending_messages == 1  # the other one was not evicted for nothing
    big = graypy_chunks(b"g" * 2400, 800, b"G" * 8)
    r.add(big[0], SENDER, 0.0)
    r.add(big[1], SENDER, 0.0)  # would pass the bound alone: ends itself, evicts none
    assert r.abandoned == Counter({"gelf_pending_full": 2})
    assert r.pending_messages == 1
    assert r.add(big[2], SENDER, 0.0) is None
    assert r.ignored == Counter({"gelf_late_chunk": 1})


def test_pending_bytes_estimate_covers_the_real_memory() -> None:
    n = 5000
    r = Reassembler(max_pending_bytes=1 << 30, max_message_bytes=MIB)
    ids = [os.urandom(8) for _ in range(n)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i, msg_id in enumerate(ids):
            data = chunk(msg_id, 1, 3, b"e" * 10)
            r.add(data, ("198.51.100.7", 1024 + i), 0.0)  # a fresh sender each, as recvfrom
            del data
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.pending_messages == n
    assert after - before < 1.1 * r.pending_bytes


# --- accounting ---------------------------------------------------------------

_BAD_KINDS = ("short", "seq_high", "count_zero", "too_many", "count_mismatch")


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[float, int, bytes, object, object]]:
    """Datagrams of several messages, (time, order, bytes, sender, key): each
    message's chunks lost, delivered or duplicated, plus bad chunks of its id,
    all within 4.9 s of its start; messages start anywhere in 15 s (so others
    expire meanwhile). Messages 2k and 2k+1 share an id, from two senders.
    ``key`` is the (sender, id) a datagram belongs to, or a unique object for
    one that is a message of its own (too short, or a count-1 chunk)."""
    out: list[tuple[float, int, bytes, object, object]] = []
    for i in range(draw(st.integers(1, 10))):
        sender = (SENDER, OTHER)[i % 2]
        msg_id = (i // 2).to_bytes(8, "big")
        count = draw(st.integers(1, 6))
        start = draw(st.floats(0, 15))
        parts = [draw(st.binary(max_size=12)) for _ in range(count)]

        datagrams: list[tuple[float, bytes]] = []
        for seq, part in enumerate(parts):
            for _ in range(draw(st.integers(0, 2))):  # lost, delivered, duplicated
                datagrams.append((start + draw(st.floats(0, 4.9)), chunk(msg_id, seq, count, part)))
        for bad in draw(st.lists(st.sampled_from(_BAD_KINDS), max_size=2)):
            if bad == "short":
                data = (b"\x1e\x0f" + msg_id)[: draw(st.integers(2, 11))]
            elif bad == "seq_high":
                data = chunk(msg_id, count + draw(st.integers(0, 3)), count)
            elif bad == "count_zero":
                data = chunk(msg_id, 0, 0)
            elif bad == "too_many":
                data = chunk(msg_id, 0, draw(st.integers(129, 255)))
            else:
                data = chunk(msg_id, 0, count + 1)
            datagrams.append((start + draw(st.floats(0, 4.9)), data))
        for t, data in datagrams:
            whole = len(data) < 12 or data[10:12] == b"\x00\x01"
            out.append((t, len(out), data, sender, object() if whole else (sender, msg_id)))
    out.sort(key=lambda d: (d[0], d[1]))
    return out


@dataclass
class _Message:
    count: int
    seqs: set[int]
    size: int


def _model(
    datagrams: list[tuple[float, int, bytes, object, object]], r: Reassembler
) -> tuple[int, Counter[str], Counter[str]]:
    """The documented outcome of each message, key by key, when nothing is
    evicted: (completed, abandoned, ignored)."""
    completed = 0
    abandoned: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    state: dict[object, _Message | None] = {}  # None: ended
    for _, _, data, _, key in datagrams:
        if len(data) < 12:
            abandoned["gelf_invalid_chunk"] += 1
            continue
        seq, count, part = data[10], data[11], data[12:]
        if (seq, count) == (0, 1):
            if len(part) > r.max_message_bytes:
                abandoned["too_large"] += 1
            else:
                completed += 1
            continue
        if key in state and state[key] is None:
            ignored["gelf_late_chunk"] += 1
            continue
        msg = state.get(key)
        if msg is None:
            if count > r.max_chunks:
                reason = "gelf_too_many_chunks"
            elif seq >= count:
                reason = "gelf_invalid_chunk"
            elif len(part) > r.max_message_bytes:
                reason = "too_large"
            else:
                state[key] = _Message(count, {seq}, len(part))
                continue
        elif count != msg.count or seq >= count:
            reason = "gelf_invalid_chunk"
        elif seq in msg.seqs:
            ignored["gelf_duplicate_chunk"] += 1
            continue
        elif msg.size + len(part) > r.max_message_bytes:
            reason = "too_large"
        else:
            msg.seqs.add(seq)
            msg.size += len(part)
            if len(msg.seqs) == count:
                completed += 1
                state[key] = None
            continue
        abandoned[reason] += 1
        state[key] = None
    abandoned["gelf_incomplete"] += sum(1 for msg in state.values() if msg is not None)
    return completed, +abandoned, ignored


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datagrams=traffic(),
    max_pending=st.sampled_from([1 << 30, 1500, 600]),  # 600: one message at a time
    max_message=st.sampled_from([MIB, 30]),
    max_chunks=st.sampled_from([128, 4]),
)
def test_every_message_is_accounted_exactly_once(
    datagrams: list[tuple[float, int, bytes, object, object]],
    max_pending: int,
    max_message: int,
    max_chunks: int,
) -> None:
    r = Reassembler(max_pending, max_message, timeout_s=5.0, max_chunks=max_chunks)
    started = {key for _, _, _, _, key in datagrams}
    parts: dict[tuple[object, int], dict[int, bytes]] = {}  # (key, count): seq -> part
    for t, _, data, sender, key in datagrams:
        if len(data) >= 12:
            parts.setdefault((key, data[11]), {})[data[10]] = data[12:]
        payload = r.add(data, sender, t)
        assert r.pending_bytes <= max_pending
        if payload is not None:
            expected = parts[key, data[11]]
            assert payload == b"".join(expected[i] for i in range(data[11]))
            assert len(payload) <= max_message
    r.expire(math.inf)
    assert (r.pending_messages, r.pending_bytes) == (0, 0)
    assert accounted(r) == len(started)
    assert set(r.abandoned) <= set(gelf.ABANDON_REASONS)
    assert set(r.ignored) <= set(gelf.IGNORE_REASONS)
    assert accounted(r) + sum(r.ignored.values()) <= len(datagrams)
    if max_pending == 1 << 30:  # nothing evicted: the exact outcome of each
        assert (r.completed, +r.abandoned, r.ignored) == _model(datagrams, r)
