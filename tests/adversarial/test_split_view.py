"""A split view: two forks of one ledger (same genesis, same server key, different blocks).

The server signs both, so receipts alone cannot tell them apart. A witness
that cosigned fork A refuses fork B, and a checker that requires one
cosignature from that witness (quorum 1) rejects B's checkpoint and detects
that B's tiles are inconsistent with the cosigned A.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import LedgerWriter, merkle, open_ledger
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key
from flower_chain.ledger.cosignature import add_cosignatures, parse_cosigner_key, verify_cosigned_checkpoint
from flower_chain.ledger.errors import CheckpointError, ProofError
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.ledger.tiles import TilesClient
from flower_chain.serve.app import LogView
from flower_chain.serve.app import build_app as log_app
from flower_chain.serve.background import ServerThread
from flower_chain.witness.client import WitnessEndpoint, WitnessPool, request_body
from flower_chain.witness.server import Witness, WitnessStore
from flower_chain.witness.server import build_app as witness_app

ORIGIN = "flower-chain/fed-test"


@pytest.fixture
def forks(federation_factory, tmp_path):
    a = federation_factory("sqlite")
    genesis = next(a.ledger.blocks(0, 1))
    g_entry = next(a.ledger.entries(0, 1))
    b_ledger = open_ledger(f"sqlite:///{tmp_path / 'fork-b.db'}", create=True)
    b_ledger.append(genesis, [g_entry], [(0, 0, merkle.leaf_hash(g_entry))])  # the very same genesis block
    b_writer = LedgerWriter(b_ledger, a.server_key)
    b = type("Fork", (), {})()
    b.ledger, b.writer = b_ledger, b_writer
    a.add_round(1, 3)
    a_round = [a.update(1, i) for i in range(3)]  # same shape, other content (another set of replies)
    b_writer.append(1, a_round)
    assert a.writer.log_size == b_writer.log_size and a.writer.head.header.log_root != b_writer.head.header.log_root
    yield a, b
    b_ledger.close()


def test_witness_refuses_the_second_fork_and_a_checker_detects_it(forks, tmp_path):
    a, b = forks
    wkey = Ed25519PrivateKey.generate()
    witness = Witness(
        "witness.test/split",
        wkey,
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, a.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    ck = parse_cosigner_key(witness.verifier_key)
    server_pub = raw_public(a.server_key)
    with ServerThread(witness_app(witness)) as wurl:
        pool = WitnessPool([WitnessEndpoint(wurl, ck)], timeout=5)
        note_a, errors = pool.cosign(a.ledger, a.writer.checkpoint())
        assert errors == {}
        cp_a, _ = verify_cosigned_checkpoint(note_a, server_pub, [ck], quorum=1, origin=ORIGIN)

        # fork B at the same size: the witness answers 409 (its size, same size with another root)
        size = cp_a.size
        assert witness.add_checkpoint(request_body(b.writer.checkpoint(), size, [])).status == 409
        assert witness.add_checkpoint(request_body(b.writer.checkpoint(), 0, [])).status == 409
        # fork B grows: its consistency proof from size does not reach A's root → 422
        b.writer.append(2, [a.update(2, i) for i in range(4)])
        proof_b = consistency_proof(b.ledger, size)
        assert witness.add_checkpoint(request_body(b.writer.checkpoint(), size, proof_b)).status == 422
        pool_b = WitnessPool([WitnessEndpoint(wurl, ck, size=size)], timeout=5)
        note_b, errors_b = pool_b.cosign(b.ledger, b.writer.checkpoint())
        assert "422" in errors_b[wurl] and note_b == b.writer.checkpoint()
        assert witness.store.get(ORIGIN) == (size, cp_a.root_hash)  # nothing changed

    # the checker: B is signed by the server, but no trusted witness cosigned it
    with pytest.raises(CheckpointError, match="0 valid cosignature"):
        verify_cosigned_checkpoint(note_b, server_pub, [ck], quorum=1, origin=ORIGIN)
    # copying A's cosignature onto B does not help: it does not verify on B's body
    a_line = note_a[len(a.writer.checkpoint()) :]
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_cosigned_checkpoint(add_cosignatures(b.writer.checkpoint(), [a_line]), server_pub, [ck], quorum=1)
    # a client that holds the cosigned A and is served fork B's tiles detects the fork from tiles alone
    with ServerThread(log_app(LogView(b.ledger, refresh_s=0.0))) as burl:
        client = TilesClient(burl, server_pub, origin=ORIGIN)
        cp_b, served_note = client.checkpoint()  # verifies under the server key: the server signed both forks
        with pytest.raises(ProofError):
            client.verify_consistency(cp_a, cp_b)
        with pytest.raises(CheckpointError):
            verify_cosigned_checkpoint(served_note, server_pub, [ck], quorum=1)


def test_fork_a_keeps_being_cosigned(forks, tmp_path):
    a, b = forks
    witness = Witness(
        "witness.test/split",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, a.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    ck = parse_cosigner_key(witness.verifier_key)
    with ServerThread(witness_app(witness)) as wurl:
        pool = WitnessPool([WitnessEndpoint(wurl, ck)], timeout=5)
        for rnd in range(1, 4):
            if rnd > 1:
                a.add_round(rnd, 2)
            note, errors = pool.cosign(a.ledger, a.writer.checkpoint())
            assert errors == {}
            verify_cosigned_checkpoint(note, raw_public(a.server_key), [ck], quorum=1)
        try:
            urllib.request.urlopen(
                urllib.request.Request(
                    wurl + "/add-checkpoint", method="POST", data=request_body(b.writer.checkpoint(), 0, [])
                ),
                timeout=5,
            )
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 409
