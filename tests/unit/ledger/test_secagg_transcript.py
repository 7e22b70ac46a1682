"""The SecAgg+ transcript format (ledger/secagg.py) and its shared arithmetic (ledger/secagg_masks.py)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from flower_chain.ledger.encoding import encode, encode_with_domain
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.secagg import (
    COMMIT,
    MASKED,
    SETUP,
    SHARE_KEYS,
    STAGE_DOMAIN,
    UNMASK,
    SecAggEntry,
    StageStatement,
    check_commit,
    check_header,
    check_reply,
    check_result,
    header_digest,
    request_digest,
    seed_digest,
    server_record,
    share_digest,
)
from flower_chain.ledger.secagg_masks import (
    AES256_CTR_V1,
    FLWR_RANDOMSTATE_32,
    finish_aggregate,
    mask_vectors,
    neighbour_graph,
)

REPLIES = {
    SETUP: {"pk1": b"a" * 10, "pk2": b"b" * 10},
    SHARE_KEYS: {"sent": {"12": b"\x01" * 32}, "shares": {"11": [b"\x05" * 32, b"\x06" * 32]}},
    MASKED: {
        "digest": b"\x02" * 32,
        "weight": 7,
        "sources": ["12", "13"],
        "seed_digest": b"\x03" * 32,
        "base_digest": b"\x07" * 32,
    },
    UNMASK: {
        "active": ["11", "12"],
        "dead": ["13"],
        "checkpoint_size": 9,
        "checkpoint_root": b"\x04" * 32,
        "seed_shares": {"11": b"s", "12": b"t"},
        "key_shares": {"13": b"k"},
        "refused": "",
    },
}


def header():
    return {
        "federation_id": "fed",
        "round": 3,
        "parent": b"\x00" * 32,
        "base_digest": b"\x01" * 32,
        "params": {
            "num_shares": 5,
            "threshold": 3,
            "clipping_range": 8.0,
            "quantization_range": 2**22,
            "mod_range": 2**32,
            "max_weight": 1000.0,
        },
        "sampled": ["11", "12", "13"],
        "graph_seed": b"\x05" * 32,
        "generator": AES256_CTR_V1,
        "nonce": b"\x06" * 16,
    }


def statement(stage):
    return StageStatement("fed", 3, b"\x07" * 32, stage, "11", "kid", request_digest(stage, {"x": 1}), REPLIES[stage])


@pytest.mark.parametrize("stage", [SETUP, SHARE_KEYS, MASKED, UNMASK])
def test_statement_round_trips_and_entry_decodes(stage):
    st = statement(stage)
    assert StageStatement.from_bytes(st.to_bytes()) == st
    entry = SecAggEntry(
        round=3,
        stage=stage,
        node_id="11",
        key_id="kid",
        verdict="accepted",
        reason="ok",
        detail="",
        statement=st.to_bytes(),
        signature=b"s" * 64,
        data={},
    )
    assert decode_entry(entry.to_bytes()) == entry


def test_server_records_decode_and_check():
    h = header()
    assert check_header(decode_entry(server_record(3, "header", h).to_bytes()).data) == h
    commit = {
        "round_id": header_digest(h),
        "live": ["11", "12"],
        "dropped": ["13"],
        "masked": {"11": b"a", "12": b"b"},
        "statements": {"11": [b"s", b"g"], "12": [b"t", b"h"]},
    }
    assert check_commit(commit) == commit
    with pytest.raises(EncodingError):
        check_commit({**commit, "statements": {"11": [b"s", b"g"]}})
    res = {
        "round_id": b"r",
        "live": ["11"],
        "aggregate_digest": b"d",
        "names": ["0"],
        "dtypes": ["float32"],
        "model_after": b"m",
        "failure": "",
    }
    assert check_result(res) == res


def test_a_secagg_entry_decodes_with_only_the_entries_module_imported():
    """Every entry type lives in ledger/entries.py: a verifier that imports only ``decode_entry`` (with the
    ``flower_chain.ledger`` package, which never loads ``ledger.secagg``) still decodes a SecAgg+ entry, never "unknown type"."""
    import subprocess
    import sys

    data = server_record(3, "header", header()).to_bytes()
    code = (
        "import sys; from flower_chain.ledger.entries import decode_entry; "
        "e = decode_entry(bytes.fromhex(sys.argv[1])); "
        "assert 'flower_chain.ledger.secagg' not in sys.modules; print(e.TYPE, e.stage)"
    )
    out = subprocess.run([sys.executable, "-c", code, data.hex()], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["secagg", "header"]


@pytest.mark.parametrize(
    "bad",
    [
        {"live": ["11"], "dropped": ["11"], "masked": {"11": b"a"}},  # live and dropped
        {"live": ["11", "12"], "dropped": [], "masked": {"11": b"a"}},  # a live node without its input
        {"live": ["11", "11"], "dropped": [], "masked": {"11": b"a"}},  # counted twice
        {"live": ["x1"], "dropped": [], "masked": {"x1": b"a"}},  # not a node id
    ],
)
def test_commitment_that_counts_a_node_twice_or_wrongly_is_refused(bad):
    with pytest.raises(EncodingError):
        check_commit({"round_id": b"r", "statements": {n: [b"", b""] for n in bad["live"]}, **bad})


@pytest.mark.parametrize("stage", [SETUP, SHARE_KEYS, MASKED, UNMASK])
def test_replies_with_missing_extra_or_mistyped_fields_are_refused(stage):
    reply = dict(REPLIES[stage])
    with pytest.raises(EncodingError):
        check_reply(stage, {**reply, "extra": 1})
    with pytest.raises(EncodingError):
        check_reply(stage, {k: v for k, v in list(reply.items())[1:]})
    first = next(iter(reply))
    with pytest.raises(EncodingError):
        check_reply(stage, {**reply, first: True})


@pytest.mark.parametrize(
    "shares",
    [{"11": [b"\x05" * 32]}, {"11": [b"\x05" * 32, b"\x06" * 31]}, {"11": [b"\x05" * 32, "x"]}, {"x": []}, []],
)
def test_share_commitments_must_be_two_32_byte_digests_per_holder(shares):
    with pytest.raises(EncodingError):
        check_reply(SHARE_KEYS, {**REPLIES[SHARE_KEYS], "shares": shares})


def test_share_digest_is_domain_separated_sha256():
    assert share_digest(b"\x01\x02") == hashlib.sha256(b"flower-chain:secagg-share:v1\x00\x01\x02").digest()
    assert share_digest(b"a") != share_digest(b"b") and share_digest(b"a") != seed_digest(b"a")


def test_header_with_unknown_generator_or_bad_params_is_refused():
    h = header()
    with pytest.raises(EncodingError):
        check_header({**h, "generator": "xor"})
    with pytest.raises(EncodingError):
        check_header({**h, "params": {**h["params"], "threshold": 3.0}})
    with pytest.raises(EncodingError):
        check_header({**h, "sampled": ["11", "11"]})


def test_decoders_are_total_on_hostile_bytes():
    """Every mutation of a valid statement or entry decodes or raises EncodingError — nothing else."""
    rng = random.Random(7)
    samples = [statement(s).to_bytes() for s in REPLIES]
    samples.append(
        server_record(
            3, COMMIT, {"round_id": b"r", "live": [], "dropped": [], "masked": {}, "statements": {}}
        ).to_bytes()
    )
    for data in samples:
        for _ in range(300):
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                i = rng.randrange(len(b))
                if op < 0.6:
                    b[i] = rng.randrange(256)
                elif op < 0.8:
                    del b[i : i + rng.randint(1, 8)]
                else:
                    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            for decoder in (StageStatement.from_bytes, decode_entry):
                try:
                    decoder(bytes(b))
                except EncodingError:
                    pass
    with pytest.raises(EncodingError):
        StageStatement.from_bytes("not bytes")
    with pytest.raises(EncodingError):
        StageStatement.from_bytes(encode_with_domain(STAGE_DOMAIN, {"stage": "unmask"}))


def test_request_digest_binds_stage_and_content():
    assert request_digest(UNMASK, {"a": [1]}) != request_digest(MASKED, {"a": [1]})
    assert request_digest(UNMASK, {"a": [1]}) != request_digest(UNMASK, {"a": [2]})
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1})


def test_neighbour_graph_is_a_symmetric_ring_from_the_committed_seed():
    nodes = [str(100 + i) for i in range(9)]
    g = neighbour_graph(nodes, 5, b"seed")
    assert g == neighbour_graph(list(reversed(nodes)), 5, b"seed")
    assert g != neighbour_graph(nodes, 5, b"other seed")
    for n, neigh in g.items():
        assert n in neigh and len(neigh) == 5
        assert all(n in g[m] for m in neigh)
    assert all(len(v) == 3 for v in neighbour_graph(nodes[:3], 5, b"s").values())


def test_flower_generator_is_flowers_pseudo_rand_gen():
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    seed, shapes = bytes(range(44)), [(1,), (3, 4), ()]
    ours = mask_vectors(seed, 2**32, shapes, FLWR_RANDOMSTATE_32)
    theirs = pseudo_rand_gen(seed, 2**32, shapes)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_aes_generator_uses_the_whole_seed():
    shapes = [(1,), (50, 20)]
    a = mask_vectors(b"\x00" * 31 + b"\x01", 2**32, shapes, AES256_CTR_V1)
    b = mask_vectors(b"\x00" * 31 + b"\x02", 2**32, shapes, AES256_CTR_V1)
    again = mask_vectors(b"\x00" * 31 + b"\x01", 2**32, shapes, AES256_CTR_V1)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    assert not np.array_equal(a[1], b[1])
    # Flower's generator folds to 32 bits: two seeds with the same XOR fold give the same mask
    s1, s2 = b"\x01\x00\x00\x00\x01\x00\x00\x00", b"\x02\x00\x00\x00\x02\x00\x00\x00"
    assert np.array_equal(
        mask_vectors(s1, 2**32, shapes, FLWR_RANDOMSTATE_32)[1], mask_vectors(s2, 2**32, shapes, FLWR_RANDOMSTATE_32)[1]
    )
    assert not np.array_equal(
        mask_vectors(s1, 2**32, shapes, AES256_CTR_V1)[1], mask_vectors(s2, 2**32, shapes, AES256_CTR_V1)[1]
    )
    assert a[1].dtype == np.int64 and a[1].min() >= 0 and a[1].max() < 2**32
    small = mask_vectors(b"k", 2**16, shapes, AES256_CTR_V1)
    assert small[1].max() < 2**16
    for bad in (3 * 2**10, 2**33):
        with pytest.raises(ValueError):
            mask_vectors(b"k", bad, shapes, AES256_CTR_V1)
    with pytest.raises(ValueError):
        mask_vectors(b"k", 2**32, shapes, "xor")


def test_finish_aggregate_is_flowers_dequantization():
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract
    from flwr.common.secure_aggregation.quantization import dequantize

    rng = np.random.default_rng(1)
    total = [np.array([123456]), rng.integers(0, 2**32, (4, 3)), rng.integers(0, 2**32, (5,))]
    ours = finish_aggregate(total, 8.0, 2**22, 4)
    q, rest = factor_extract(total)
    theirs = dequantize(rest, 8.0, 2**22)
    for vec in theirs:
        vec += -(4 - 1) * 8.0
        vec *= 2**22 / q
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError):
        finish_aggregate([np.array([0])] + total[1:], 8.0, 2**22, 4)
