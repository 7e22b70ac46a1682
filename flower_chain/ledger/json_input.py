"""JSON read from a file or the network, parsed without letting its nesting reach the interpreter's stack.

Python's C JSON decoder recurses once per ``[`` or ``{``. It stops at the interpreter's recursion limit,
but an application (or a library it imports) may raise that limit far above what the C stack holds; a
hostile document nested a million levels deep then crashes the process (a segmentation fault, not an
exception). :func:`loads` measures the nesting first, in one linear pass that never recurses, and refuses
anything deeper than ``max_depth`` with :class:`JSONInputError` (a :class:`ValueError`), so every reader of
outside JSON has one failure to turn into a finding.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

MAX_DEPTH = 100
"""Deeper than any document flower-chain writes (canonical values nest at most 32 levels inside a block)."""


class JSONInputError(ValueError):
    """The bytes are not JSON this reader accepts (malformed, or nested deeper than its limit)."""


_CHUNK = 1 << 20  # bytes measured at a time: memory stays O(chunk) whatever the input's size


def nesting_depth(data: bytes) -> int:
    """The deepest bracket nesting of ``data`` (UTF-8) read as JSON, brackets inside strings not counted.

    Exact for every prefix of ``data`` that is well-formed JSON; past the first malformation the figure may
    be off, which does not matter: a decoder stops at that point too. Measured 1 MiB at a time, carrying the
    depth, whether the chunk starts inside a string and the backslash run that ends the previous chunk.
    """
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    view = memoryview(data)
    depth, best, inside, run = 0, 0, 0, 0
    for start in range(0, len(data), _CHUNK):
        b = np.frombuffer(view[start : start + _CHUNK], dtype=np.uint8)
        n = b.size
        backslash = b == ord("\\")
        idx = np.arange(n, dtype=np.int32)
        # a character is escaped when an odd run of backslashes ends right before it; the last character that
        # is not a backslash, at or before i (the previous chunk's run ends at the virtual index -1 - run)
        last_plain = np.maximum.accumulate(np.where(backslash, np.int32(-1 - run), idx))
        run_before = np.empty(n, dtype=np.int32)
        run_before[0] = run
        run_before[1:] = idx[:-1] - last_plain[:-1]
        quote = (b == ord('"')) & (run_before % 2 == 0)
        parity = (np.cumsum(quote, dtype=np.int32) + inside) & 1  # 1 inside a string (the opening quote too)
        step = np.zeros(n, dtype=np.int8)
        outside = parity == 0
        step[((b == ord("[")) | (b == ord("{"))) & outside] = 1
        step[((b == ord("]")) | (b == ord("}"))) & outside] = -1
        level = np.cumsum(step, dtype=np.int32) + depth
        best = max(best, int(level.max()))
        depth, inside = int(level[-1]), int(parity[-1])
        run = int(n - 1 - last_plain[-1]) if backslash[-1] else 0
    return best


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for outside input: :class:`JSONInputError` for malformed, non-UTF-8 or too-deep input.

    Bytes must be UTF-8 (RFC 8259 §8.1; flower-chain writes nothing else): decoding first means the nesting
    is measured on the characters the decoder reads (``json.loads`` would otherwise guess UTF-16/32 from the
    bytes, and a character such as U+2200 would hide a quote from a byte-level count).
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONInputError(f"is not JSON: not UTF-8 ({e})") from None
    raw = text.encode("utf-8", "surrogatepass")  # no multi-byte UTF-8 sequence holds an ASCII byte
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:
        raise JSONInputError(f"is nested too deeply (more than {max_depth} levels)")
    try:
        return json.loads(text)  # a str: no encoding guessed
    except RecursionError:  # a limit set lower than max_depth by the application
        raise JSONInputError("is nested too deeply (beyond the interpreter's recursion limit)") from None
    except ValueError as e:  # JSONDecodeError
        raise JSONInputError(f"is not JSON: {e}") from None
