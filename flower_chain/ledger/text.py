"""Text that came from the network, made safe to print, log and plot.

Key ids, node ids, metric names and reasons in a ledger come from replies
nobody has authenticated yet. :func:`safe_text` bounds their length and
escapes every character that could forge a log line (newlines, other
control characters), change how a terminal shows the line (escape
sequences, bidirectional overrides), or be read as markup by a plot
(matplotlib's mathtext ``$...$``). HTML needs :func:`html.escape` on top.
:func:`safe_label` also keeps distinct values distinct once shortened.
:func:`terminal_text` is the unbounded form the CLI's consoles apply to every
string they print (:mod:`flower_chain.cli.common`): only what a terminal would
act on is escaped, so paths and formulas stay readable.
"""

from __future__ import annotations

import hashlib
import unicodedata

DEFAULT_LIMIT = 80
ELLIPSIS = "…"


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == "$":
        return "\\$"
    if _is_control(ch):  # controls, formats (bidi overrides), separators
        return _code(ch)
    return ch


def _is_control(ch: str) -> bool:
    """C0/C1 controls, format characters (bidi overrides, zero-width joiners), line/paragraph separators,
    surrogates and unassigned code points: everything but the plain space that a terminal may act on."""
    return unicodedata.category(ch)[0] in "CZ" and ch != " "


def _code(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_text(value: object) -> str:
    """``value`` with every character a terminal could act on written as a visible escape.

    Parameters
    ----------
    value : object
        Any value; non-strings are rendered with ``str``.

    Returns
    -------
    str
        Newlines, carriage returns, ``ESC``, ``BEL``, C1 controls, bidirectional overrides and every
        other control, format or separator character except the plain space as
        ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN``; nothing else changed, nothing cut. The result is
        one line that moves no cursor and changes no colour.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: no character to escape (isprintable is false for all of them)
        return text
    return "".join(_code(ch) if _is_control(ch) else ch for ch in text)


def safe_text(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """A printable, bounded rendering of ``value``.

    Parameters
    ----------
    value : object
        Any value; non-strings are rendered with ``str``.
    limit : int
        Most characters of the result before the ellipsis.

    Returns
    -------
    str
        Control, format and separator characters (except the plain space) as
        ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN``, ``$`` and ``\\`` escaped; when
        longer than ``limit``, cut at an escape boundary and ended with ``…``
        (so never more than ``limit + 1`` characters, never half an escape).
    """
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    used = 0
    for i, ch in enumerate(text):
        piece = _escape(ch)
        if used + len(piece) > limit:
            return "".join(out) + ELLIPSIS
        out.append(piece)
        used += len(piece)
        if used == limit and i + 1 < len(text):
            return "".join(out) + ELLIPSIS
    return "".join(out)


def safe_label(value: object, limit: int = 24) -> str:
    """A short plot/table label for ``value``: :func:`safe_text`, and when that had to change the
    value (escapes, cut), a ``#`` and 8 hex digits of its SHA-256, so distinct values stay distinct.

    Parameters
    ----------
    value : object
        The text from the ledger.
    limit : int
        Most characters of the readable part (the label is at most ``limit + 10`` long).
    """
    text = value if isinstance(value, str) else str(value)
    shown = safe_text(text, limit)
    if shown == text:
        return text
    return f"{shown}#{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


#: Most digits :func:`is_decimal` accepts: every number flower-chain reads fits (sizes and heights below
#: 2**63, Flower's 64-bit node ids), and ``int()`` of it never meets Python's int-conversion limit.
MAX_DECIMAL_DIGITS = 20


def is_decimal(s: str, max_digits: int = MAX_DECIMAL_DIGITS) -> bool:
    """``s`` is one to ``max_digits`` ASCII digits 0-9.

    ``str.isdigit()`` alone is true for "²" or "٣", which ``int()`` then refuses or reads as another
    number, and ``int()`` of 4,301 digits raises: every decimal field read from the network or a file goes
    through this test.
    """
    return 0 < len(s) <= max_digits and s.isascii() and s.isdigit()
