"""Receipts' batched inclusion proofs (flower_chain.strategies.receipt_tree) are today's proofs, byte for byte."""

from __future__ import annotations

from functools import lru_cache

import pytest

from flower_chain.ledger import merkle
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.tlog_proof import InclusionProof, prove_inclusion
from flower_chain.strategies.receipt_tree import ProofTree
from flower_chain.strategies.receipts import ReceiptServer
from flower_chain.wire import CTX_RECEIPT, RECEIPT_SEPARATOR

BLOCKS = [5, 17, 40, 3, 64, 1, 30]


@pytest.mark.parametrize("levels", [1, 2, 3, 5])
@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_every_proof_is_prove_inclusions(federation_factory, levels, backend):
    fed = federation_factory(backend, n_clients=4)
    tree = ProofTree(fed.ledger, lru_cache(maxsize=None)(fed.ledger.node), levels)
    for rnd, n in enumerate(BLOCKS, start=1):
        fed.add_round(rnd, n)
        head = fed.ledger.head()
        for index in range(head.header.log_size):  # the same tree object across heads: nothing stale served
            assert tree.proof_text(index, head) == prove_inclusion(fed.ledger, index).to_text(), (rnd, index)


def test_an_older_head_is_proven_against_its_own_size(federation_factory):
    fed = federation_factory("sqlite")
    for rnd, n in enumerate(BLOCKS, start=1):
        fed.add_round(rnd, n)
    tree = ProofTree(fed.ledger, fed.ledger.node, 3)
    blocks = list(fed.ledger.blocks())
    for block in (blocks[-1], blocks[3], blocks[-1], blocks[2]):
        for index in range(block.header.log_size):
            assert tree.proof_text(index, block) == prove_inclusion(fed.ledger, index, head=block).to_text()


def test_a_chunk_storage_does_not_prove_is_not_used(federation_factory):
    """Storage returns an entry other than the one its stored hashes prove: that chunk's proofs come from the
    stored hashes (the neighbours' proofs still verify); computed from the entries they would not."""
    fed = federation_factory("sqlite")
    for rnd, n in enumerate(BLOCKS, start=1):
        fed.add_round(rnd, n)
    led = fed.ledger
    head = led.head()
    real = led.entries
    bad = 21  # in the chunk [16, 24) of 8 leaves

    def entries(start, end=None):
        for i, data in enumerate(real(start, end), start=start):
            yield data + b"x" if i == bad else data

    led.entries = entries
    tree = ProofTree(led, led.node, 3)
    cp = verify_checkpoint(head.checkpoint, raw_public(fed.server_key))
    for index in range(16, 24):
        text = tree.proof_text(index, head)
        assert text == prove_inclusion(led, index, entry=tree.entry(index, head.header.log_size)).to_text()
        if index != bad:  # a neighbour's proof holds the stored hash of the bad leaf, not one of its bytes
            proof = InclusionProof.from_text(text)
            merkle.verify_inclusion(merkle.leaf_hash(proof.entry), index, cp.size, list(proof.hashes), cp.root_hash)


def test_receipt_server_sends_the_same_proofs(federation_factory):
    """Every node's receipt (ReceiptServer.config) holds the proofs prove_inclusion makes from storage."""
    fed = federation_factory("sqlite", n_clients=40)
    receipts = ReceiptServer(fed.ledger, raw_public(fed.server_key))
    for rnd in (1, 2, 3):
        block = fed.add_round(rnd, 40)
        first = block.header.first_index
        entries = [decode_entry(d) for d in fed.ledger.entries(first, block.header.log_size)]
        receipts.committed(first, [(e, True) for e in entries])
        for e in entries if rnd == 2 else ():  # each node wants the receipts of its updates from round 2 on
            receipts.observe(e.node_id, e.key_id, True, -1, rnd)
    head = fed.ledger.head()
    for node in range(40):
        got = receipts.config(node, head)[CTX_RECEIPT].split(RECEIPT_SEPARATOR)
        key = fed.update(3, node).key_id
        rounds = [r for r in (2, 3) if receipts.update_index.get((key, r))]
        want = [prove_inclusion(fed.ledger, i).to_text() for r in rounds for i in receipts.update_index[(key, r)]]
        assert got == want and want, node
