"""The CE1 decoder against an independent reference decoder (tests/support/ce1_reference.py): same value for
every canonical input, the same refusal (always :class:`EncodingError`, never another exception) for every
mutation of one."""

from __future__ import annotations

import math
import random

import pytest

from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.errors import EncodingError
from tests.support.ce1_reference import Refused, reference_decode


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "bytes", "text"] + (["list", "map"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, rng.uniform(-1e9, 1e9)])
    if kind == "bytes":
        return rng.randbytes(rng.randrange(0, 40))
    if kind == "text":
        return "".join(rng.choice("aZ09 _-é€😀") for _ in range(rng.randrange(0, 12)))
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {
        "".join(rng.choice("abcé") for _ in range(rng.randrange(0, 4))): _random_value(rng, depth + 1)
        for _ in range(rng.randrange(0, 6))
    }


def _outcome(fn, data: bytes):
    try:
        return "value", fn(data)
    except (EncodingError, Refused):
        return "refused", None


def _mutations(rng: random.Random, data: bytes):
    yield data[: rng.randrange(0, len(data))] if data else data  # truncated
    yield data + rng.randbytes(rng.randrange(1, 4))  # trailing bytes
    for _ in range(6):
        b = bytearray(data)
        if b:
            i = rng.randrange(len(b))
            b[i] = rng.choice([b[i] ^ (1 << rng.randrange(8)), 0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        yield bytes(b)
    if len(data) > 2:  # a slice moved elsewhere: lengths and counts no longer match what follows
        i, j = sorted(rng.sample(range(len(data)), 2))
        yield data[:i] + data[j:] + data[i:j]


@pytest.mark.parametrize("seed", range(8))
def test_the_decoder_agrees_with_the_reference_on_values_and_their_mutations(seed):
    rng = random.Random(seed)
    for _ in range(250):
        value = _random_value(rng)
        data = encode(value)
        assert decode(data) == reference_decode(data) == value  # the generator makes no NaN
        for bad in _mutations(rng, data):
            ours, ref = _outcome(decode, bad), _outcome(reference_decode, bad)
            assert ours[0] == ref[0], (bad.hex(), ours, ref)
            if ours[0] == "value":
                # the same value (compared by its encoding: a NaN is not equal to itself), and accepted means
                # canonical: it re-encodes to the very bytes
                assert encode(ours[1]) == encode(ref[1]) == bad


@pytest.mark.parametrize(
    "bad, why",
    [
        (b"", "truncated"),
        (b"\x05\x00\x00\x00\x05abc", "bytes shorter than their length"),
        (b"\x06\x00\x00\x00\x01\xff", "text that is not UTF-8"),
        (b"\x08\x00\x00\x00\x02\x00\x00\x00\x01b\x00\x00\x00\x00\x01a\x00", "keys out of order"),
        (b"\x08\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "a repeated empty key"),
        (b"\x08\x00\x00\x00\x01\x00\x00\x00\x01\xc3\x00", "a key that is not UTF-8"),
        (b"\x04\x7f\xf8\x00\x00\x00\x00\x00\x01", "a NaN other than the canonical one"),
        (b"\x03\x00\x00\x00", "a short integer"),
        (b"\x07\x00\x00\x00\x02\x00", "a list shorter than its count"),
        (b"\x07\xff\xff\xff\xff", "a count far beyond the input"),
        (b"\x07\x00\x00\x00\x01" * 40 + b"\x00", "nested beyond 32 levels"),
        (b"\x09", "an unknown tag"),
        (b"\x00\x00", "trailing bytes"),
    ],
)
def test_each_non_canonical_form_is_refused_by_both(bad, why):
    with pytest.raises(EncodingError):
        decode(bad)
    with pytest.raises(Refused):
        reference_decode(bad)
