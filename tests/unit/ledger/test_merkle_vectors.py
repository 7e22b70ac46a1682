"""RFC 6962/9162 vectors from ../shared (copied to tests/support/data/rfc6962.json) and systematic mutations."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from flower_chain.ledger import merkle
from flower_chain.ledger.errors import ProofError

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "support" / "data" / "rfc6962.json").read_text())
LEAF_SETS = {k: [bytes.fromhex(x) for x in v["leaves_hex"]] for k, v in VECTORS["leaf_sets"].items()}


def _leaf_hashes(name):
    return [merkle.leaf_hash(d) for d in LEAF_SETS[name]]


def _h(xs):
    return [bytes.fromhex(x) for x in xs]


def test_sources_block_is_kept():
    assert VECTORS["sources"], "the vectors must keep their sources and licenses"
    assert all("license" in s for s in VECTORS["sources"].values())


@pytest.mark.parametrize("v", VECTORS["hash_primitives"], ids=lambda v: v["kind"])
def test_hash_primitives(v):
    expected = bytes.fromhex(v["expected_hex"])
    if v["kind"] == "empty_root":
        assert merkle.root([]) == expected == merkle.EMPTY_ROOT
    elif v["kind"] == "leaf":
        assert merkle.leaf_hash(bytes.fromhex(v["data_hex"])) == expected
    else:
        assert merkle.node_hash(bytes.fromhex(v["left_hex"]), bytes.fromhex(v["right_hex"])) == expected


@pytest.mark.parametrize("v", VECTORS["tree_roots"], ids=lambda v: f"{v['leaf_set']}-{v['tree_size']}")
def test_tree_roots(v):
    leaves = _leaf_hashes(v["leaf_set"])[: v["tree_size"]]
    assert merkle.root(leaves) == bytes.fromhex(v["root_hex"])


@pytest.mark.parametrize("v", VECTORS["subtree_hashes"], ids=lambda v: f"{v['start']}-{v['end']}")
def test_subtree_hashes(v):
    leaves = _leaf_hashes(v["leaf_set"])[v["start"] : v["end"]]
    assert merkle.root(leaves) == bytes.fromhex(v["hash_hex"])


def _inclusion_leaf(v):
    if v.get("leaf_hash_hex") is not None:
        return bytes.fromhex(v["leaf_hash_hex"])
    if v.get("leaf_data_hex") is not None:
        return merkle.leaf_hash(bytes.fromhex(v["leaf_data_hex"]))
    return _leaf_hashes(v["leaf_set"])[v["leaf_index"]]


@pytest.mark.parametrize("v", VECTORS["inclusion_proofs"], ids=lambda v: v["desc"])
def test_inclusion_vectors(v):
    proof = _h(v["path_hex"])
    if "generate" in v["check"]:
        leaves = _leaf_hashes(v["leaf_set"])
        assert merkle.inclusion_proof(leaves, v["leaf_index"], v["tree_size"]) == proof
    if "verify" in v["check"]:
        args = (_inclusion_leaf(v), v["leaf_index"], v["tree_size"], proof, bytes.fromhex(v["root_hex"]))
        if v["expect_valid"]:
            merkle.verify_inclusion(*args)
        else:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(*args)


@pytest.mark.parametrize("v", VECTORS["consistency_proofs"], ids=lambda v: v["desc"])
def test_consistency_vectors(v):
    proof = _h(v["path_hex"])
    if "generate" in v["check"]:
        leaves = _leaf_hashes(v["leaf_set"])
        assert merkle.consistency_proof(leaves, v["size1"], v["size2"]) == proof
    if "verify" in v["check"]:
        args = (v["size1"], v["size2"], proof, bytes.fromhex(v["root1_hex"]), bytes.fromhex(v["root2_hex"]))
        if v["expect_valid"]:
            merkle.verify_consistency(*args)
        else:
            with pytest.raises(ProofError):
                merkle.verify_consistency(*args)


def _valid_subtree(start, end):
    n = end - start
    return start == 0 or start == end or start % (1 << (n - 1).bit_length()) == 0


# C.1.3 defines the MTC draft's *subtree* consistency proofs, which RFC 9162 does not have.
RFC9162_ACCUMULATED = [v for v in VECTORS["accumulated"] if not v["name"].startswith("C.1.3")]


@pytest.mark.parametrize("v", RFC9162_ACCUMULATED, ids=lambda v: v["name"])
def test_accumulated_subtree_vectors(v):
    """draft-ietf-plants-merkle-tree-certs Appendix C.1: subtrees [start, end) of d[i] = byte i."""
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(v["max_size"])]
    out = hashlib.sha256()
    name = v["name"]
    if name.startswith("C.1.1"):
        for end in range(v["max_size"] + 1):
            for start in range(end + 1):
                if _valid_subtree(start, end):
                    out.update(f"[{start}, {end}) {merkle.root(leaves[start:end]).hex()}\n".encode())
    else:
        for end in range(v["max_size"] + 1):
            for start in range(end + 1):
                if not _valid_subtree(start, end):
                    continue
                for index in range(start, end):
                    path = merkle.inclusion_proof(leaves[start:end], index - start)
                    out.update((f"{index} [{start}, {end})" + "".join(" " + p.hex() for p in path) + "\n").encode())
    assert out.hexdigest() == v["expected_hex"]


# --- systematic mutations and properties -------------------------------------------------------


def _mutations(proof):
    """Every way to damage a proof: flip a bit in each hash, drop, add, swap, truncate."""
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        yield f"flip-{i}", bad
        yield f"drop-{i}", proof[:i] + proof[i + 1 :]
        yield f"dup-{i}", proof[: i + 1] + proof[i:]
    yield "append", list(proof) + [merkle.EMPTY_ROOT]
    yield "prepend", [merkle.EMPTY_ROOT] + list(proof)
    if len(proof) > 1:
        yield "reverse", list(reversed(proof))
    yield "short-hash", [p[:31] for p in proof] or [b"\x00" * 31]


def test_random_trees_inclusion_and_mutations():
    rng = random.Random(9162)
    for _ in range(60):
        size = rng.randint(1, 300)
        leaves = [merkle.leaf_hash(rng.randbytes(8)) for _ in range(size)]
        r = merkle.root(leaves)
        for index in {0, size - 1, rng.randrange(size)}:
            proof = merkle.inclusion_proof(leaves, index)
            merkle.verify_inclusion(leaves[index], index, size, proof, r)
            for name, bad in _mutations(proof):
                if bad == proof:
                    continue
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(leaves[index], index, size, bad, r)
            for wrong_index in {index + 1, index - 1, index ^ 1, size}:
                if 0 <= wrong_index != index and wrong_index < size and leaves[wrong_index] == leaves[index]:
                    continue
                if wrong_index == index or wrong_index < 0:
                    continue
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(leaves[index], wrong_index, size, proof, r)


def test_random_trees_consistency_and_mutations():
    rng = random.Random(6962)
    for _ in range(60):
        size2 = rng.randint(1, 300)
        size1 = rng.randint(1, size2)
        leaves = [merkle.leaf_hash(rng.randbytes(8)) for _ in range(size2)]
        r1, r2 = merkle.root(leaves[:size1]), merkle.root(leaves)
        proof = merkle.consistency_proof(leaves, size1)
        merkle.verify_consistency(size1, size2, proof, r1, r2)
        for name, bad in _mutations(proof):
            if bad == proof:
                continue
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, bad, r1, r2)
        if size1 < size2:
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, proof, r2, r1)
            with pytest.raises(ProofError):
                merkle.verify_consistency(size2, size1, proof, r1, r2)


def test_compact_range_matches_root_and_serves_proofs():
    rng = random.Random(1)
    leaves = [merkle.leaf_hash(rng.randbytes(4)) for _ in range(257)]
    cr = merkle.CompactRange()
    nodes = {}
    for i, h in enumerate(leaves):
        for level, idx, nh in cr.append(h):
            nodes[(level, idx)] = nh
        assert cr.root() == merkle.root(leaves[: i + 1])
        assert len(cr.hashes) == bin(i + 1).count("1")
    src = merkle.range_from_nodes(lambda lv, ix: nodes[(lv, ix)])
    for size in (1, 2, 3, 7, 8, 100, 256, 257):
        for index in (0, size // 2, size - 1):
            assert merkle.inclusion_proof_from(src, index, size) == merkle.inclusion_proof(leaves, index, size)
        for s1 in (1, size // 3 or 1, size):
            assert merkle.consistency_proof_from(src, s1, size) == merkle.consistency_proof(leaves, s1, size)
    rebuilt = merkle.CompactRange.from_nodes(200, lambda lv, ix: nodes[(lv, ix)])
    assert rebuilt.root() == merkle.root(leaves[:200])
