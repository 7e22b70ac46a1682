"""The chunked AES mask generator and the in-place adders are bit for bit the one-shot arithmetic (issue 20).

The reference below is the generator as docs/secagg.md §4.2 specifies it (one AES-256-CTR keystream over
the whole mask, little-endian u32 words, reduced modulo ``mod_range``); the shapes straddle the 1 MiB
keystream chunks so a counter that restarted, skipped or split a word at a chunk edge would show.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from flower_chain.ledger import secagg_masks as sm

EDGES = [(1,), (3,), (), (2**18 + 3,), (5, 2**18 - 1), (0,), (7,)]


def one_shot(seed: bytes, mod_range: int, shapes) -> list[np.ndarray]:
    key = hashlib.sha256(b"flower-chain:secagg-mask:v1\x00" + seed).digest()
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    stream = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor().update(b"\x00" * (4 * sum(sizes)))
    words = np.frombuffer(stream, dtype="<u4").astype(np.int64) & (mod_range - 1)
    out, pos = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(words[pos : pos + size].reshape(shape))
        pos += size
    return out


def test_known_answer():
    # pinned from the one-shot generator before the chunked one replaced it (commit b8ee733)
    got = sm.mask_vectors(b"\x00" * 31 + b"\x01", 2**32, [(4,)], sm.AES256_CTR_V1)[0]
    assert got.tolist() == [3016683171, 2631446976, 4260507346, 3763302321]
    long = sm.mask_vectors(b"seed" * 8, 2**32, [(2**18 + 5,)], sm.AES256_CTR_V1)[0]  # crosses a chunk edge
    assert hashlib.sha256(long.tobytes()).hexdigest() == (
        "8a41e4eae45ff6002b680de6d3eff64a62393659e1e62ef4b78973802f2a8b20"
    )


@pytest.mark.parametrize("mod_range", [2**32, 2**16, 2])
def test_chunked_generator_is_the_one_shot_stream(mod_range):
    got = sm.mask_vectors(b"seed" * 8, mod_range, EDGES, sm.AES256_CTR_V1)
    want = one_shot(b"seed" * 8, mod_range, EDGES)
    assert [a.shape for a in got] == [a.shape for a in want]
    assert all(a.dtype == np.int64 and np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("generator", [sm.AES256_CTR_V1, sm.FLWR_RANDOMSTATE_32])
@pytest.mark.parametrize("mod_range", [2**32, 2**20])
def test_add_mask_is_the_sum_of_mask_vectors(generator, mod_range):
    rng = np.random.default_rng(1)
    acc = [rng.integers(0, mod_range, s) for s in EDGES]
    want = [a.copy() for a in acc]
    for seed, sign in ((b"a" * 32, 1), (b"b" * 32, -1), (b"c" * 32, 1)):
        for w, m in zip(want, sm.mask_vectors(seed, mod_range, EDGES, generator)):
            w += sign * m
        assert sm.add_mask(acc, seed, mod_range, generator, sign) is acc
    assert all(np.array_equal(a, w) for a, w in zip(acc, want))


def test_add_mask_refuses_what_it_cannot_update_in_place():
    for bad in ([np.zeros(4, np.int32)], [np.zeros((4, 4), np.int64)[:, ::2]], [np.zeros(4, np.int64)[:0:-1]]):
        with pytest.raises(ValueError):
            sm.add_mask(bad, b"k", 2**32, sm.AES256_CTR_V1)
    ro = np.zeros(4, np.int64)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        sm.add_mask([ro], b"k", 2**32, sm.AES256_CTR_V1)
    with pytest.raises(ValueError):
        sm.add_mask([np.zeros(4, np.int64)], b"k", 3 * 2**10, sm.AES256_CTR_V1)
    with pytest.raises(ValueError):
        sm.add_mask([np.zeros(4, np.int64)], b"k", 2**32, "xor")


@pytest.mark.parametrize("sign", [1, -1])
def test_add_mod_in_place_is_the_modular_sum(sign):
    rng = np.random.default_rng(2)
    shapes = [(1,), (40, 25), ()]
    acc = [rng.integers(0, 2**32, s) for s in shapes]
    other = [rng.integers(0, 2**32, s) for s in shapes]
    want = [((a + b) if sign > 0 else (a - b)) & (2**32 - 1) for a, b in zip(acc, other)]
    got = sm.add_mod(acc, other, 2**32, sign)
    assert got is acc and all(np.array_equal(g, w) for g, w in zip(got, want))
    frozen = np.ones(3, np.int64)
    frozen.flags.writeable = False  # not updated in place: a private copy is
    out = sm.add_mod([frozen], [np.ones(3, np.int64)], 2**32)
    assert out[0].tolist() == [2, 2, 2] and frozen.tolist() == [1, 1, 1]
