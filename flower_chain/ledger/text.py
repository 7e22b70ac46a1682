"""Text that came from the network, made safe to print, log and plot.

Key ids, node ids, metric names and reasons in a ledger come from replies
nobody has authenticated yet. :func:`safe_text` bounds their length and
escapes every character that could forge a log line (newlines, other
control characters), change how a terminal shows the line (escape
sequences, bidirectional overrides), or be read as markup by a plot
(matplotlib's mathtext ``$...$``).
"""

from __future__ import annotations

import unicodedata

DEFAULT_LIMIT = 80


def safe_text(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """A printable, bounded rendering of ``value``: control and format characters as ``\\xNN``/``\\uNNNN``,
    ``$`` and ``\\`` escaped, at most ``limit`` characters (then ``…``)."""
    text = value if isinstance(value, str) else str(value)
    out = []
    for ch in text[: limit + 1]:
        cat = unicodedata.category(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "$":
            out.append("\\$")
        elif cat[0] in "CZ" and ch != " ":  # controls, formats (bidi overrides), line/paragraph separators
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    s = "".join(out)
    return s[:limit] + "…" if len(text) > limit or len(s) > limit else s
