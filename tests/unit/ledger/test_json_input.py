"""The bounded JSON reader: nesting measured without recursion, strings and escapes respected."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_chain.ledger.json_input import MAX_DEPTH, JSONInputError, loads, nesting_depth


def _depth(v) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


_text = st.text(alphabet=st.sampled_from(list('ab[]{}"\\\n/') + ["\u00e9", "\u2028"]), max_size=8)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_values, st.booleans())
def test_nesting_depth_is_the_structural_depth_whatever_the_strings_hold(value, ascii_only):
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(data) == _depth(value)
    assert loads(data) == value


def test_escaped_quotes_and_backslash_runs_do_not_shift_the_string_boundaries():
    assert nesting_depth(b'["\\\\", [["\\"["]]]') == 3  # "\\" closes; "\"[" holds a bracket
    assert nesting_depth(b'{"k\\\\\\"[[": []}') == 2
    assert nesting_depth(b"no brackets at all") == 0


def test_too_deep_malformed_and_non_utf8_input_raise_one_error_type():
    with pytest.raises(JSONInputError, match="nested too deeply"):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(JSONInputError, match="nested too deeply"):
        loads(b"[" * 1_000_000)  # far past any stack, measured, never parsed
    for bad in (b"{ not json", b"\xff\xfe\x00", b"", "[\ud800]"):
        with pytest.raises(JSONInputError, match="is not JSON"):
            loads(bad)
    with pytest.raises(JSONInputError, match="nested too deeply"):
        loads(b'["' + b"[" * 500 + b'"' + b"[" * 200, max_depth=150)  # brackets after a string still count
    assert loads(b'["' + b"[" * 500 + b'"]') == ["[" * 500]  # brackets inside a string do not
