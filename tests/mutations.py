"""Byte-level mutations for the fuzz tests of the C parsers (replay's file reader, the vSensor's
pcapng scan): hypothesis draws a few edits, `mutate` applies them to a valid seed file."""

from __future__ import annotations

import struct

from hypothesis import strategies as st


def mutations(interesting: list[int], *, max_pos: int, dup_max: int, both_endians: bool = False):
    """One edit: flip bits, overwrite an aligned word with an interesting value (in either byte
    order with both_endians), cut the tail, insert, delete or duplicate a few bytes."""
    word = (st.tuples(st.just("word"), st.integers(0, max_pos), st.sampled_from(interesting), st.booleans())
            if both_endians else st.tuples(st.just("word"), st.integers(0, max_pos), st.sampled_from(interesting)))
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, max_pos), st.integers(1, 255)),
        word,
        st.tuples(st.just("cut"), st.integers(0, max_pos)),
        st.tuples(st.just("insert"), st.integers(0, max_pos), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), st.integers(0, max_pos), st.integers(1, 16)),
        st.tuples(st.just("dup"), st.integers(0, max_pos), st.integers(1, dup_max)),
    )


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        pos = op[1] % len(buf)
        if op[0] == "flip":
            buf[pos] ^= op[2]
        elif op[0] == "word":
            pos -= pos % 4
            big = len(op) > 3 and op[3]
            buf[pos:pos + 4] = struct.pack(">I" if big else "<I", op[2])
        elif op[0] == "cut":
            del buf[pos:]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
        elif op[0] == "delete":
            del buf[pos:pos + op[2]]
        elif op[0] == "dup":
            buf[pos:pos] = buf[pos:pos + op[2]]
    return bytes(buf)
