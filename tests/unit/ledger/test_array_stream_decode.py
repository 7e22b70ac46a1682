"""decode_arrays is total: any bytes end in arrays or in EncodingError (stored blobs are hostile input)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_chain.ledger.arrays import ARRAYS_DOMAIN, decode_arrays, encode_arrays
from flower_chain.ledger.errors import EncodingError


def stream(name=b"x", dtype=b"<f4", shape=(2,), nbytes=8, body=b"\0" * 8) -> bytes:
    """One array in the stream's framing (big-endian lengths, as encode_arrays writes them)."""
    head = ARRAYS_DOMAIN + struct.pack(">I", 1) + struct.pack(">I", len(name)) + name
    head += struct.pack(">I", len(dtype)) + dtype + struct.pack(">I", len(shape))
    return head + b"".join(struct.pack(">Q", d) for d in shape) + struct.pack(">Q", nbytes) + body


def test_the_framing_helper_matches_the_encoder():
    assert stream() == encode_arrays([("x", np.zeros(2, np.float32))])


@pytest.mark.parametrize(
    "bad, why",
    [
        (stream(dtype=b"xyz"), "not one an array stream holds"),
        (stream(dtype=b"\xff"), "not one an array stream holds"),
        (stream(dtype=b"|O8"), "not one an array stream holds"),  # object arrays: pickles in disguise
        (stream(dtype=b"i4,i4"), "not one an array stream holds"),  # a structured dtype text
        (stream(dtype=b">f4"), "not one an array stream holds"),  # the encoder writes little-endian only
        (stream(dtype=b"|V0", nbytes=0, body=b""), "not one an array stream holds"),
        (stream(name=b"\xff"), "not UTF-8"),
        (stream(shape=(2**32, 2**32), nbytes=0, body=b""), "beyond any array"),  # int64 would wrap to 0
        (stream(shape=(2**20, 2**20), nbytes=0, body=b""), "byte count does not match"),
        (stream(shape=(1,) * 65, nbytes=4, body=b"\0" * 4), "dimensions"),
        (stream(shape=(0, 2**64 - 1), nbytes=0, body=b""), "beyond any array"),  # zero bytes, numpy cannot shape it
        (stream(shape=(2**63, 0), nbytes=0, body=b""), "beyond any array"),
        (stream(shape=(0, 2**40, 2**40), nbytes=0, body=b""), "beyond any array"),
    ],
)
def test_malformed_streams_are_encoding_errors_never_other_exceptions(bad, why):
    with pytest.raises(EncodingError, match=why):
        decode_arrays(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 120))
def test_any_mutation_of_a_valid_stream_is_arrays_or_encoding_error(junk, at):
    good = encode_arrays([("w", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", np.array(True))])
    at = min(at, len(good))
    for data in (good[:at] + junk + good[at:], good[:at] + junk, good[:at] + junk + good[at + len(junk) :]):
        try:
            decode_arrays(data)
        except EncodingError:
            pass
