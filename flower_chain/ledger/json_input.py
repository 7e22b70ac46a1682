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

_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


class JSONInputError(ValueError):
    """The bytes are not JSON this reader accepts (malformed, or nested deeper than its limit)."""


def nesting_depth(data: bytes) -> int:
    """The deepest bracket nesting of ``data`` read as JSON, brackets inside strings not counted.

    Exact for every prefix of ``data`` that is well-formed JSON; past the first malformation the figure may
    be off, which does not matter: a decoder stops at that point too.
    """
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    b = np.frombuffer(data, dtype=np.uint8)
    backslash = b == ord("\\")
    # a character is escaped when an odd run of backslashes ends right before it
    idx = np.arange(b.size, dtype=np.int64)
    last_plain = np.maximum.accumulate(np.where(backslash, -1, idx))  # last non-backslash at or before i
    run_before = np.empty(b.size, dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = idx[:-1] - last_plain[:-1]  # backslashes ending at i - 1
    quote = (b == ord('"')) & (run_before % 2 == 0)
    outside = np.cumsum(quote, dtype=np.int64) % 2 == 0  # a closing quote counts as outside, an opening one inside
    step = np.zeros(b.size, dtype=np.int32)
    step[np.isin(b, _OPEN) & outside] = 1
    step[np.isin(b, _CLOSE) & outside] = -1
    return int(max(0, np.cumsum(step, dtype=np.int64).max()))


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for outside input: :class:`JSONInputError` for malformed, non-UTF-8 or too-deep input."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:
        raise JSONInputError(f"is nested too deeply (more than {max_depth} levels)")
    try:
        return json.loads(raw)
    except RecursionError:  # a limit set lower than max_depth by the application
        raise JSONInputError("is nested too deeply (beyond the interpreter's recursion limit)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise JSONInputError(f"is not JSON: {e}") from None
