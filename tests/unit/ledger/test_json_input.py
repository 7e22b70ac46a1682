"""The bounded JSON reader: nesting measured without recursion, strings and escapes respected."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_chain.ledger import json_input
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
@given(_values, st.booleans(), st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_nesting_depth_is_the_structural_depth_whatever_the_strings_hold(value, ascii_only, chunk):
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    old, json_input._CHUNK = json_input._CHUNK, chunk  # chunk edges anywhere: inside strings, backslash runs
    try:
        assert nesting_depth(data) == _depth(value)
    finally:
        json_input._CHUNK = old
    assert loads(data) == value


def test_utf16_and_utf32_documents_are_refused_not_measured_as_bytes():
    """json.loads(bytes) guesses UTF-16/32; a byte-level count would read U+2200 (00 22) as a quote and hide
    every bracket after it. Outside JSON must be UTF-8; a str is parsed as the characters it holds."""
    doc = '["\u2200",' + "[" * 500 + "]" * 500 + "]"
    for enc in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-8-sig"):
        with pytest.raises(JSONInputError):
            loads(doc.encode(enc))
    with pytest.raises(JSONInputError, match="nested too deeply"):
        loads(doc)
    nul = '["\x00\x00",' + "[" * 500 + "]" * 500 + "]"  # NULs in a str: no encoding is guessed from them
    with pytest.raises(JSONInputError, match="nested too deeply"):
        loads(nul)


def test_measuring_a_large_document_takes_memory_of_the_chunk_not_of_the_input():
    import tracemalloc

    doc = b'{"k": [' + b"[" * 100 + b'"' + b"x" * 30_000_000 + b'"' + b"]" * 100 + b"]}"
    tracemalloc.start()
    try:
        assert nesting_depth(doc) == 102
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, peak  # a 30 MB document: ~20 MB of temporaries per 1 MiB chunk at most


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
