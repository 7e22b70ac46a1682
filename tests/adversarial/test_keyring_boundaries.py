"""Review 3, F1: a dishonest server appends a ``keys`` entry as the first entry of block 1. Readers without block
boundaries (the SecAgg+ node reading the keyring from a commit proof, ``leading_genesis`` over a log's entries
from tiles) must not take it as part of the genesis keyring: the genesis counts the ``keys`` entries that continue
it (``keys_entries``), and ``verify`` refuses the ledger."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.clients.secagg_checks import _genesis_keys
from flower_chain.ledger import open_ledger
from flower_chain.ledger.entries import KeysEntry, decode_entry
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.genesis import keyring_proof, leading_genesis
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.proofs import inclusion_proof
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import LedgerWriter
from tests.integration.ledger.test_genesis_keyring import FID, genesis_of, keyring


def test_a_keys_entry_at_the_start_of_block_1_is_never_part_of_the_keyring(tmp_path):
    sk, ring = Ed25519PrivateKey.generate(), keyring(Ed25519PrivateKey.generate() for _ in range(3))
    ledger = open_ledger(f"sqlite:///{tmp_path}/late.db", create=True)
    writer = LedgerWriter(ledger, sk)
    writer.init(genesis_of(sk, ring))
    sybil = Ed25519PrivateKey.generate()
    writer.append(0, [KeysEntry(client_keys=keyring([sybil]))])  # block 1, entry index 1
    writer.append(1, [])
    size, root = writer.log_size, ledger.head().header.log_root
    proof = keyring_proof(ledger, size)  # the honest shape: entry 0 only (block 0 holds 1 entry)
    assert "genesis_keys" not in proof
    proof["genesis_keys"] = [next(iter(ledger.entries(1, 2)))]  # entry 1 (block 1) sent as a "continuation"
    proof["genesis_keys_inclusion"] = [b"".join(inclusion_proof(ledger, 1, size))]
    keys, problem = _genesis_keys(proof, (size, root), FID)
    assert problem is not None and key_id(sybil) not in keys, "the node accepted a key the auditor refuses"
    genesis, n = leading_genesis([decode_entry(d) for d in ledger.entries(0, size)])
    assert n == 1 and key_id(sybil) not in genesis.client_keys
    with pytest.raises(VerificationError, match="outside block 0"):
        verify(ledger)


def test_a_genesis_counting_keys_entries_block_0_does_not_hold_fails(tmp_path):
    from dataclasses import replace

    from flower_chain.ledger.genesis import GenesisError, join_genesis

    sk, ring = Ed25519PrivateKey.generate(), keyring(Ed25519PrivateKey.generate() for _ in range(3))
    genesis = genesis_of(sk, ring)
    with pytest.raises(GenesisError, match="counts 2 keys entries"):
        join_genesis([replace(genesis, keys_entries=2), KeysEntry(client_keys=keyring([Ed25519PrivateKey.generate()]))])
    with pytest.raises(GenesisError, match="counts 1 keys entries"):
        leading_genesis([replace(genesis, keys_entries=1)])
