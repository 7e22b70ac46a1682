"""Array digest v2 (docs/ledger-format.md §6.1) against an independent implementation written from the spec.

The reference below builds the array stream and the tree with ``struct`` and ``hashlib`` only, from the
text of §6 and §6.1; it calls nothing in ``flower_chain.ledger.arrays`` except the public functions under
test (``array_digest``, ``array_digest_v1``, ``array_digest_v2``, ``stream_digest``, ``encode_arrays``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_chain.ledger.arrays import (
    array_digest,
    array_digest_v1,
    array_digest_v2,
    decode_arrays,
    encode_arrays,
    stream_digest,
)
from flower_chain.ledger.entries import GenesisEntry, decode_entry
from flower_chain.ledger.errors import EncodingError

# -- the reference implementation (from the spec text only) ---------------------------------------------------
MIB = 1048576
LEAF = b"flower-chain:arrays:v2:leaf\x00"
NODE = b"flower-chain:arrays:v2:node\x00"


def ref_stream(named, version: int = 2) -> bytes:
    out = [b"flower-chain:arrays:v1\x00", struct.pack(">I", len(named))]
    for name, a in named:
        a = np.asarray(a)
        if a.ndim == 0 and version == 1:  # v1 records a 0-d array as shape (1,)
            a = a.reshape(1)
        le = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        raw = le.tobytes(order="C")
        nb, dt = name.encode("utf-8"), le.dtype.str.encode("ascii")
        out += [struct.pack(">I", len(nb)), nb, struct.pack(">I", len(dt)), dt, struct.pack(">I", a.ndim)]
        out += [struct.pack(">Q", d) for d in a.shape]
        out += [struct.pack(">Q", len(raw)), raw]
    return b"".join(out)


def ref_mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(NODE + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_v2(stream: bytes) -> bytes:
    if len(stream) <= MIB:
        return hashlib.sha256(stream).digest()
    return ref_mth([hashlib.sha256(LEAF + stream[i : i + MIB]).digest() for i in range(0, len(stream), MIB)])


def pat(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) % 251).astype(np.uint8)


# -- the spec's test vectors ----------------------------------------------------------------------------------
VECTORS = [
    ([], 27, "e60c842058b7ed09bc2e4494d7887b3ce99c0b4052a7dc68be6bb161ac4b48d4", None),
    (
        [("empty", np.zeros((0, 3), np.float32))],
        71,
        "7367dfecb9b8fd891999eeadf20054f11cca32c0f9f44ed855e4461d2266a721",
        None,
    ),
    (
        [("w", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", np.array([1, -2], np.int64))],
        139,
        "514774b323f3d5a406d018a7a1361151c0b124c00161813df30e0469472b23b5",
        None,
    ),
    (
        [("step", np.array(7, np.int64)), ("w", np.arange(3, dtype=np.float32))],
        106,
        "630a4a9d91c2b54dc04613828c65d63717ff3b4e0458644a8e70d0d66979444c",
        "32e3e7ee00f8fdbbebde56c93a2835f4f7e10033ea49be1152c88228f31b449d",
    ),
    ([("x", pat(1048517))], 1048576, "f1a8f62667998c5b89b643edfbc1298fba266d420b2fdb852d65380097b2d4b3", None),
    (
        [("x", pat(1048518))],
        1048577,
        "b9128facebd6a4db0165d6d258593bb0766298d7509982ce3377973e80d426e9",
        "03251b9848973651933a906474e21ed5f861e73d9d863fdfadbaa2b1583b1dfb",
    ),
    (
        [("x", pat(2097093))],
        2097152,
        "97f01178d32af05a533974b2d5aa59cfbe6815fb30d4f13883ec2bd45c375b25",
        "05df4264f0ca741b087b33d3fe1bba378af973538ff0569b807ae39b82df7b93",
    ),
    (
        [("x", pat(2098152))],
        2098211,
        "3751384139672c53591f8521caaa8010bf2732fb283b57eafd6639f0471c2915",
        "d352feee9aa70d28524c388bf0bfd6217a574b7c00c5fd5e6716b9a3c02ce352",
    ),
    (
        [("a", pat(3145728)), ("b", pat(1060921))],
        4206740,
        "f5c13f16bd6f48bae0e4e3c72031ad205fecf1bc29845be313390e6c645a05c4",
        "7fc222842b7481626227df24e25326b82f0e300ff924d6a0e22f158d4b860667",
    ),
]


@pytest.mark.parametrize("named,size,v1,v2", VECTORS, ids=[f"{v[1]}B" for v in VECTORS])
def test_spec_vectors_hold_for_the_reference_and_the_code(named, size, v1, v2):
    v2 = v2 or v1  # up to one chunk, v2 is v1
    stream, stream_v1 = ref_stream(named), ref_stream(named, 1)
    assert len(stream) == size and encode_arrays(named) == stream and encode_arrays(named, 1) == stream_v1
    assert hashlib.sha256(stream_v1).hexdigest() == v1 and ref_v2(stream).hex() == v2
    assert array_digest_v1(named).hex() == v1 and array_digest(named, 1).hex() == v1
    assert array_digest(named).hex() == v2 and array_digest_v2(named).hex() == v2
    assert stream_digest(stream_v1, 1).hex() == v1 and stream_digest(stream).hex() == v2
    big_endian = [(n, a.astype(a.dtype.newbyteorder(">"))) for n, a in named]
    assert array_digest(big_endian).hex() == v2 and array_digest(big_endian, 1).hex() == v1


@pytest.mark.parametrize("chunks", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_exact_chunk_boundaries_match_the_reference(chunks, delta):
    named = [("x", pat(chunks * MIB - 59 + delta))]  # 59 bytes of stream around one uint8 array named "x"
    stream = ref_stream(named)
    assert len(stream) == chunks * MIB + delta
    assert array_digest(named) == ref_v2(stream) == stream_digest(stream)
    assert (array_digest(named) == array_digest_v1(named)) == (len(stream) <= MIB)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_thread_count_never_changes_the_digest(threads):
    named = [
        (f"a{i}", np.random.default_rng(i).standard_normal(300_000 + 17 * i).astype(np.float32)) for i in range(6)
    ]  # 7.2 MB: chunks span arrays and headers
    want = ref_v2(ref_stream(named))
    assert array_digest(named, threads=threads) == want
    assert stream_digest(encode_arrays(named), threads=threads) == want


def test_layout_byte_order_and_views_do_not_change_the_digest():
    a = np.random.default_rng(0).standard_normal((700, 900))  # 5 MB of float64
    want = ref_v2(ref_stream([("a", a)]))
    assert array_digest([("a", np.asfortranarray(a))]) == want
    assert array_digest([("a", a.astype(">f8"))]) == want
    wide = np.zeros((700, 1800))
    wide[:, ::2] = a
    assert array_digest([("a", wide[:, ::2])]) == want  # a strided view is hashed as its C-order copy


def test_every_change_of_the_stream_changes_the_digest():
    base = [("a", pat(3 * MIB)), ("b", np.arange(1000, dtype=np.float32))]
    d = array_digest(base)
    flipped = pat(3 * MIB)
    flipped[2 * MIB + 5] ^= 1  # one bit in the third chunk
    assert array_digest([("a", flipped), base[1]]) != d
    swapped = np.concatenate([pat(3 * MIB)[MIB : 2 * MIB], pat(3 * MIB)[:MIB], pat(3 * MIB)[2 * MIB :]])
    assert array_digest([("a", swapped), base[1]]) != d  # two chunks swapped
    assert array_digest([("a", pat(3 * MIB).reshape(3, MIB)), base[1]]) != d  # same bytes, another shape
    assert array_digest([("a", pat(3 * MIB).view(np.int8)), base[1]]) != d  # same bytes, another dtype
    assert array_digest([("A", pat(3 * MIB)), base[1]]) != d  # another name
    assert array_digest(list(reversed(base))) != d
    assert array_digest([base[0]]) != d
    assert array_digest_v1(base) != d  # over one chunk, v1 and v2 differ


def test_no_digest_equals_a_leaf_or_node_of_its_own_tree():
    stream = ref_stream([("x", pat(2 * MIB))])
    leaves = [hashlib.sha256(LEAF + stream[i : i + MIB]).digest() for i in range(0, len(stream), MIB)]
    assert stream_digest(stream) not in leaves
    # the tags of a v2 node and of the stream differ, so a one-chunk stream never reads as a tree node
    assert NODE[:21] == b"flower-chain:arrays:v1\x00"[:21] and NODE[21:22] != b"flower-chain:arrays:v1\x00"[21:22]
    assert LEAF[:22] == NODE[:22] and LEAF != NODE and len(LEAF) == len(NODE) == 28


def test_v2_keeps_a_0d_array_apart_from_a_one_element_array_and_its_blob_round_trips():
    scalar, vector = [("n", np.array(5, np.int64))], [("n", np.array([5], np.int64))]
    assert array_digest(scalar) != array_digest(vector)
    assert array_digest_v1(scalar) == array_digest_v1(vector)  # the v1 quirk, kept for v1 ledgers
    assert decode_arrays(encode_arrays(scalar))[0][1].shape == ()
    assert decode_arrays(encode_arrays(scalar, 1))[0][1].shape == (1,)
    assert stream_digest(encode_arrays(scalar, 1), 1) == array_digest(scalar, 1)


def test_a_blob_is_addressed_by_the_stream_digest_of_its_bytes():
    named = [("w", np.random.default_rng(1).standard_normal(600_000).astype(np.float32))]
    blob = encode_arrays(named)
    assert stream_digest(blob) == array_digest(decode_arrays(blob)) == array_digest(named)
    assert stream_digest(bytearray(blob)) == stream_digest(memoryview(blob)) == stream_digest(blob)
    assert stream_digest(blob[:-1]) != stream_digest(blob)  # defined for any bytes, without decoding


@pytest.mark.parametrize("version", [0, 3, -1, "2", 2.0, True, None])
def test_an_unknown_version_is_an_encoding_error(version):
    with pytest.raises(EncodingError, match="unknown array digest version"):
        array_digest([("a", np.zeros(3))], version)
    with pytest.raises(EncodingError, match="unknown array digest version"):
        stream_digest(b"x", version)


def test_threads_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        array_digest([("x", pat(2 * MIB))], threads=0)


def _genesis(**kw) -> GenesisEntry:
    return GenesisEntry(
        federation_id="f",
        origin="flower-chain/f",
        server_key=b"k" * 32,
        client_keys={},
        strategy="FedAvg",
        config_digest=b"c" * 32,
        created_ms=1,
        **kw,
    )


def test_the_genesis_names_the_digest_version_and_a_v1_genesis_keeps_its_bytes():
    new = _genesis()
    assert new.digest_version == 2 and decode_entry(new.to_bytes()) == new
    assert b"digest_version" in new.to_bytes()
    old = _genesis(digest_version=1)  # a ledger written before v2: no field at all
    assert b"digest_version" not in old.to_bytes()
    assert decode_entry(old.to_bytes()).digest_version == 1


def test_a_genesis_with_an_explicit_v1_or_an_unknown_version_does_not_decode():
    from flower_chain.ledger.encoding import encode_with_domain
    from flower_chain.ledger.entries import ENTRY_DOMAIN

    d = _genesis().to_dict()
    for bad, why in (
        (1, "written by leaving it out"),
        (3, "unknown array digest version"),
        (True, "written by leaving it out"),
        ("2", "must be int"),
    ):
        with pytest.raises(EncodingError, match=why):
            decode_entry(encode_with_domain(ENTRY_DOMAIN, {**d, "digest_version": bad}))
    with pytest.raises(EncodingError, match="unknown array digest version"):
        _genesis(digest_version=3)


def test_the_ledger_reader_finds_the_version_in_the_genesis(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger.backends import open_ledger
    from flower_chain.ledger.keys import raw_public
    from flower_chain.ledger.writer import LedgerWriter, digest_version_of

    for version in (1, 2):
        key = Ed25519PrivateKey.generate()
        ledger = open_ledger(f"sqlite:///{tmp_path}/v{version}.db", create=True)
        LedgerWriter(ledger, key).init(
            GenesisEntry(
                federation_id="f",
                origin="flower-chain/f",
                server_key=raw_public(key),
                client_keys={},
                strategy="s",
                config_digest=b"c" * 32,
                created_ms=1,
                digest_version=version,
            )
        )
        assert digest_version_of(ledger) == version
        ledger.close()
        reopened = open_ledger(f"sqlite:///{tmp_path}/v{version}.db")
        assert digest_version_of(reopened) == version
        reopened.close()


def _child_digest(queue) -> None:
    queue.put(array_digest([("x", pat(3 * MIB))], threads=2))


def test_a_forked_child_digests_with_its_own_pool():
    want = array_digest([("x", pat(3 * MIB))], threads=2)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_digest, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == want
    finally:
        child.join(60)
    assert child.exitcode == 0


_dtypes = st.sampled_from(["<f4", ">f4", "<f8", ">f8", "<i8", ">i4", "|u1", "|b1", "<c8", "<f2"])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=8), _dtypes, st.lists(st.integers(0, 40), max_size=3)), max_size=4),
    st.integers(0, 3),
)
def test_any_arrays_hash_as_the_reference_says(specs, pad_mib):
    rng = np.random.default_rng(len(specs))
    named = [(name, rng.integers(0, 255, size=shape).astype(dt)) for name, dt, shape in specs]
    named.append(("pad", pat(pad_mib * MIB + 3)))  # 0..3 MiB more: one to four chunks
    stream = ref_stream(named)
    assert (
        array_digest(named) == ref_v2(stream)
        and array_digest_v1(named) == hashlib.sha256(ref_stream(named, 1)).digest()
    )
    assert [(n, a.shape) for n, a in decode_arrays(encode_arrays(named))] == [(n, a.shape) for n, a in named]


@pytest.mark.parametrize(
    "text,cpus",
    [
        ("200000 100000\n", 2),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("max 100000", 1 << 16),
        ("garbage", 1 << 16),
        (None, 1 << 16),
    ],
)
def test_the_default_thread_count_respects_a_cgroup_cpu_quota(tmp_path, text, cpus):
    from flower_chain.ledger import arrays

    path = tmp_path / "cpu.max"
    if text is not None:
        path.write_text(text)
    assert arrays._cgroup_cpus(str(path)) == cpus
    assert arrays.default_threads() >= 1
