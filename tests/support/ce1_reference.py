"""An independent CE1 decoder, written from docs/ledger-format.md §2 alone, for differential tests.

Slow and plain on purpose: a byte stream read front to back, every rule of the spec a separate check. The
project's decoder (:func:`flower_chain.ledger.encoding.decode`) must return the same value for every input
this one accepts, and refuse every input this one refuses.
"""

from __future__ import annotations

import io
import math
import struct
from typing import Any


class Refused(Exception):
    """The input is not the canonical encoding of any value."""


def _read(stream: io.BytesIO, n: int) -> bytes:
    got = stream.read(n)
    if len(got) != n:
        raise Refused("truncated")
    return got


def _value(stream: io.BytesIO, depth: int) -> Any:
    if depth > 32:
        raise Refused("too deep")
    tag = _read(stream, 1)[0]
    if tag == 0:
        return None
    if tag == 1:
        return False
    if tag == 2:
        return True
    if tag == 3:
        return int.from_bytes(_read(stream, 8), "big", signed=True)
    if tag == 4:
        raw = _read(stream, 8)
        x = struct.unpack(">d", raw)[0]
        if math.isnan(x) and raw.hex() != "7ff8000000000000":
            raise Refused("non-canonical NaN")
        return x
    if tag in (5, 6, 7, 8):
        count = int.from_bytes(_read(stream, 4), "big")
        if tag == 5:
            return _read(stream, count)
        if tag == 6:
            try:
                return _read(stream, count).decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise Refused("bad UTF-8") from e
        if tag == 7:
            return [_value(stream, depth + 1) for _ in range(count)]
        out: dict[str, Any] = {}
        last: bytes | None = None
        for _ in range(count):
            key = _read(stream, int.from_bytes(_read(stream, 4), "big"))
            if last is not None and not key > last:
                raise Refused("keys not strictly ascending")
            last = key
            try:
                text = key.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise Refused("bad UTF-8 key") from e
            out[text] = _value(stream, depth + 1)
        return out
    raise Refused(f"unknown tag {tag}")


def reference_decode(data: bytes) -> Any:
    """The value ``data`` encodes; :class:`Refused` when it encodes none (trailing bytes included)."""
    stream = io.BytesIO(bytes(data))
    value = _value(stream, 0)
    if stream.read(1):
        raise Refused("trailing bytes")
    return value
