"""SecAgg+ arithmetic shared by the server, the client and the auditor (numpy only: neither flwr nor torch).

Specified in docs/secagg.md §4. Everything here is deterministic, so the auditor re-derives bit for bit
what the server computed:

* :func:`neighbour_graph`: the neighbour sets of a round from its committed seed;
* :func:`mask_vectors`: the mask generators, by version name (:data:`GENERATORS`);
* :func:`add_mask`, :func:`add_mod`: masks added in place (AES keystream streamed in 1 MiB chunks);
* :func:`finish_aggregate`: the unmasked integer sum to the weighted average (Flower's dequantization).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

#: Flower 1.42's ``pseudo_rand_gen``: the seed folded to 32 bits seeds numpy's MT19937 (Flower issue #7522).
FLWR_RANDOMSTATE_32 = "flwr-randomstate-32"
#: AES-256 in counter mode, keyed by SHA-256 over the whole seed (docs/secagg.md §4.2).
AES256_CTR_V1 = "aes256-ctr-v1"
GENERATORS = (AES256_CTR_V1, FLWR_RANDOMSTATE_32)
#: Generators whose output an attacker can enumerate (2**32 seeds): the auditor warns.
WEAK_GENERATORS = frozenset({FLWR_RANDOMSTATE_32})
_MASK_KEY_DOMAIN = b"flower-chain:secagg-mask:v1\x00"
_GRAPH_DOMAIN = b"flower-chain:secagg-graph:v1\x00"

Shapes = Sequence[tuple[int, ...]]

#: Keystream words per AES update: 1 MiB of keystream, written into a reused buffer (cache-sized, no 4n-byte
#: plaintext or ciphertext per call); the counter runs on across updates, so the stream is the one-shot one.
_CHUNK_WORDS = 1 << 18
_ZEROS = bytes(4 * _CHUNK_WORDS)


def neighbour_graph(sampled: Sequence[str], num_shares: int, seed: bytes) -> dict[str, list[str]]:
    """Each node's neighbours (itself included): a ring over the nodes ordered by ``SHA-256(seed || id)``.

    Parameters
    ----------
    sampled : sequence of str
        Node ids (decimal text) of the round.
    num_shares : int
        Shares per secret: each node's neighbourhood is ``num_shares`` wide (all nodes when larger).
    seed : bytes
        The round's committed graph seed.
    """
    order = sorted(set(sampled), key=lambda n: (hashlib.sha256(_GRAPH_DOMAIN + seed + n.encode()).digest(), n))
    n = len(order)
    half = min(int(num_shares) >> 1, (n - 1) // 2 if n else 0)
    if int(num_shares) >= n:
        return {nid: sorted(order) for nid in order}
    return {nid: sorted({order[(i + k) % n] for k in range(-half, half + 1)}) for i, nid in enumerate(order)}


def mask_vectors(seed: bytes, mod_range: int, shapes: Shapes, generator: str) -> list[np.ndarray]:
    """The mask for ``shapes``: int64 arrays in ``[0, mod_range)`` from ``seed`` under ``generator``.

    Raises
    ------
    ValueError
        Unknown generator, a ``mod_range`` that is not a power of two up to 2**32, or a bad seed.
    """
    _check_mod_range(mod_range)
    if generator == FLWR_RANDOMSTATE_32:
        return _randomstate_32(seed, mod_range, shapes)
    if generator == AES256_CTR_V1:
        return _aes_ctr(seed, mod_range, shapes)
    raise ValueError(f"unknown mask generator {generator!r}")


def add_mask(acc: list[np.ndarray], seed: bytes, mod_range: int, generator: str, sign: int = 1) -> list[np.ndarray]:
    """``acc[i] += sign * mask[i]`` in place, ``mask`` being :func:`mask_vectors` for ``acc``'s shapes; not reduced.

    ``acc`` holds C-contiguous writable int64 arrays; the caller reduces modulo ``mod_range`` once at the
    end (every mask value is below ``2**32``: up to ``2**31`` terms cannot overflow). Under
    ``aes256-ctr-v1`` the keystream is made 1 MiB at a time and added where it lands (no mask array is
    allocated); the sum is bit for bit the one over :func:`mask_vectors`.

    Raises
    ------
    ValueError
        As :func:`mask_vectors`, or an accumulator that is not writable C-contiguous int64.
    """
    _check_mod_range(mod_range)
    if any(a.dtype != np.int64 or not a.flags.c_contiguous or not a.flags.writeable for a in acc):
        raise ValueError("the accumulator must hold writable C-contiguous int64 arrays")
    op = np.add if sign >= 0 else np.subtract
    if generator != AES256_CTR_V1:
        for a, m in zip(acc, mask_vectors(seed, mod_range, [a.shape for a in acc], generator)):
            op(a, m, out=a)
        return acc
    enc = _encryptor(seed)
    buf = bytearray(4 * _CHUNK_WORDS + 15)
    zeros = memoryview(_ZEROS)
    for a in acc:
        flat = a.reshape(-1)  # a view: ``a`` is C-contiguous
        for pos in range(0, flat.size, _CHUNK_WORDS):
            n = min(_CHUNK_WORDS, flat.size - pos)
            enc.update_into(zeros[: 4 * n], buf)
            words = np.frombuffer(buf, dtype="<u4", count=n)
            if mod_range < 2**32:
                words = words & np.uint32(mod_range - 1)
            op(flat[pos : pos + n], words, out=flat[pos : pos + n])
    return acc


def _check_mod_range(mod_range: object) -> None:
    if not isinstance(mod_range, int) or mod_range < 2 or mod_range > 2**32 or mod_range & (mod_range - 1):
        raise ValueError(f"mod_range must be a power of two in [2, 2**32], got {mod_range!r}")


def _encryptor(seed: bytes) -> CipherContext:
    """AES-256-CTR keyed by SHA-256 over the domain and the whole seed, counter block zero."""
    if not isinstance(seed, (bytes, bytearray)) or not seed:
        raise ValueError("the mask seed must be non-empty bytes")
    key = hashlib.sha256(_MASK_KEY_DOMAIN + bytes(seed)).digest()
    return Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()


def _randomstate_32(seed: bytes, num_range: int, shapes: Shapes) -> list[np.ndarray]:
    """Flower 1.42's ``pseudo_rand_gen``, the same numbers (its range excludes ``num_range - 1``)."""
    if len(seed) % 4:
        raise ValueError("the 32-bit generator needs a seed whose length is a multiple of 4")
    seed32 = 0
    for i in range(0, len(seed), 4):
        seed32 ^= int.from_bytes(seed[i : i + 4], "little")
    gen = np.random.RandomState(seed32)
    out = []
    for shape in shapes:
        if len(shape) == 0:
            out.append(np.array(gen.randint(0, num_range - 1), dtype=np.int64))
        else:
            out.append(gen.randint(0, num_range - 1, shape, dtype=np.int64))
    return out


def _aes_ctr(seed: bytes, mod_range: int, shapes: Shapes) -> list[np.ndarray]:
    enc = _encryptor(seed)
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    total = sum(sizes)
    words = np.empty(total, dtype=np.int64)
    buf = bytearray(4 * min(total, _CHUNK_WORDS) + 15)  # update_into wants block_size - 1 spare bytes
    zeros = memoryview(_ZEROS)
    for pos in range(0, total, _CHUNK_WORDS):
        n = min(_CHUNK_WORDS, total - pos)
        enc.update_into(zeros[: 4 * n], buf)
        # little-endian u32 words, reduced modulo mod_range (a power of two) and widened in one pass
        np.bitwise_and(np.frombuffer(buf, dtype="<u4", count=n), mod_range - 1, out=words[pos : pos + n])
    out, pos = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(words[pos : pos + size].reshape(shape))
        pos += size
    return out


def add_mod(acc: list[np.ndarray], other: Sequence[np.ndarray], mod_range: int, sign: int = 1) -> list[np.ndarray]:
    """``acc + sign * other`` modulo ``mod_range`` (a power of two), array by array, in place.

    The int64 arrays of ``acc`` are updated and returned (no temporary per array); values stay below
    ``2**32``, so the int64 sum cannot overflow before the reduction.
    """
    mask = mod_range - 1
    op = np.add if sign >= 0 else np.subtract
    for i, (a, b) in enumerate(zip(acc, other)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int64 or not a.flags.writeable:
            a = acc[i] = np.array(a, dtype=np.int64)  # a private int64 copy to update
        op(a, b, out=a)
        np.bitwise_and(a, mask, out=a)
    return acc


def finish_aggregate(
    unmasked: Sequence[np.ndarray], clipping_range: float, quantization_range: int, live: int
) -> list[np.ndarray]:
    """Flower's dequantization of the unmasked sum of ``live`` inputs into the weighted average (float64).

    ``unmasked[0]`` is the sum of the quantized weights, the rest the sum of the quantized weighted
    parameters (Flower's ``factor_combine``); the operations are Flower 1.42's ``unmask_stage`` in order.
    """
    total = int(np.asarray(unmasked[0]).reshape(-1)[0])
    if total <= 0:
        raise ValueError("the unmasked weights sum to zero")
    inv = quantization_range / total
    quantizer = (2 * clipping_range) / quantization_range
    offset = -(live - 1) * clipping_range
    out = []
    for arr in unmasked[1:]:
        vec = np.asarray(arr).view(np.ndarray).astype(float) * quantizer + (-clipping_range)
        vec += offset
        vec *= inv
        out.append(vec)
    return out
