"""The ledger's fast paths give the bytes and answers of the general code, and refuse what it refuses.

Three caches and short cuts serve a 10,000-reply round: the CE1 encoder's map layouts (by key tuple), the
array stream's per-array headers (by name, dtype, shape) with arrays already canonical taken as they are,
and the element-wise finiteness check for small arrays (the dot-product screen only for large ones).
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_chain.ledger import encoding
from flower_chain.ledger.arrays import _SMALL, array_digest, encode_arrays, finite, first_nonfinite
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.errors import EncodingError
from tests.support.ce1_reference import reference_decode
from tests.unit.ledger.test_array_digest_v2 import ref_stream, ref_v2


class LookAlike:
    """Hashes and compares equal to the text ``"a"``, and is no text."""

    def __hash__(self) -> int:
        return hash("a")

    def __eq__(self, other: object) -> bool:
        return other == "a" or isinstance(other, LookAlike)


def test_a_cached_map_layout_gives_the_canonical_bytes_every_time():
    value = {"zeta": 1, "a": b"x", "mid": [1.5, {"k": None, "b": True}]}
    first = encode(value)
    assert encode(dict(reversed(list(value.items())))) == first == encode(value)  # key order never matters
    assert reference_decode(first) == decode(first) == value


def test_a_key_that_only_looks_like_text_is_refused_after_the_text_key_was_cached():
    encode({"a": 1})
    with pytest.raises(EncodingError, match="map keys must be text"):
        encode({LookAlike(): 1})
    with pytest.raises(EncodingError, match="map keys must be text"):
        encode({1: 1})


def test_a_str_subclass_key_encodes_as_its_text():
    class Name(str):
        pass

    assert encode({Name("a"): 1}) == encode({"a": 1})


def test_the_layout_cache_stays_bounded_and_keeps_every_encoding_canonical():
    for i in range(3 * encoding._MAX_LAYOUTS):
        value = {f"k{i}": i, f"j{i % 7}": -i}
        assert reference_decode(encode(value)) == value
        assert len(encoding._LAYOUTS) <= encoding._MAX_LAYOUTS


@pytest.mark.parametrize("size", [1, 7, _SMALL, _SMALL + 1, 3 * _SMALL])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
def test_finite_finds_every_bad_value_on_both_sides_of_the_small_array_bound(size, dtype):
    a = np.ones(size, dtype)
    assert finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        for at in {0, size // 2, size - 1}:
            b = a.copy()
            b[at] = bad
            assert not finite(b), (size, dtype, bad, at)
            assert first_nonfinite([("ok", a), ("bad", b.reshape(1, -1))]) == "bad"


def test_huge_finite_values_whose_dot_product_overflows_are_finite():
    big = np.full(_SMALL + 1, np.finfo(np.float32).max, np.float32)
    assert finite(big) and finite(big[:10])


def _variants():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    yield "C order", a
    yield "Fortran order", np.asfortranarray(a)
    yield "big-endian", a.astype(">f4")
    yield "strided view", a[:, ::2]
    yield "0-d", np.array(3.5)
    yield "empty", np.zeros((0, 4), np.float64)
    yield "read-only view", np.frombuffer(a.tobytes(), np.float32).reshape(6, 5)
    yield "subclass", a.view(type("Sub", (np.ndarray,), {}))
    yield "integers", np.arange(12, dtype=np.int16).reshape(3, 4)


@pytest.mark.parametrize("label,arr", list(_variants()), ids=[v[0] for v in _variants()])
def test_every_layout_hashes_and_encodes_as_the_reference_says(label, arr):
    named = [("w", arr), ("b", np.zeros(3, np.float32))]
    want = ref_stream(named)
    assert encode_arrays(named) == want
    assert array_digest(named) == ref_v2(want)
    assert array_digest(named) == array_digest(named)  # the second call reads the cached headers


def test_headers_are_cached_by_everything_they_hold():
    a = np.zeros((2, 3), np.float32)
    seen = {
        array_digest([(name, x)])
        for name in ("w", "v")
        for x in (a, a.astype(np.float64), a.reshape(3, 2), a.reshape(6), a.astype(">f4").astype(np.int32))
    }
    assert len(seen) == 10


def test_a_text_subclass_name_hashes_as_its_text():
    a = np.ones(4, np.float32)
    assert array_digest([(np.str_("w"), a)]) == array_digest([("w", a)])


@pytest.mark.parametrize("version", [1, 2])
def test_an_object_array_is_refused_not_hashed_by_its_pointers(version):
    with pytest.raises(EncodingError):
        array_digest([("o", np.array([1, "x"], dtype=object))], version)


def test_large_layouts_are_encoded_but_never_cached():
    few_long = {"a" * 5000: 1, "b" * 5000: 2}
    many = {f"m{i}": i for i in range(65)}
    for value in (few_long, many):
        assert reference_decode(encode(value)) == value
        assert tuple(value) not in encoding._LAYOUTS
