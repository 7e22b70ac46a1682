"""Review 3, F2: the witness must never cosign a checkpoint whose named head block ends another log size than the
checkpoint's: the head it cosigned last, named again at a larger size, is a 409 and nothing is stored."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.checkpoint import Checkpoint, head_line, parse_verifier_key, sign_checkpoint, verifier_key
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.witness.client import request_body
from flower_chain.witness.server import Witness, WitnessStore
from tests.conftest import Federation

FED = "fed-r3"
ORIGIN = f"flower-chain/{FED}"


def _witness(f: Federation, tmp_path) -> Witness:
    keys = {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]}
    return Witness("witness.test/r3", Ed25519PrivateKey.generate(), keys, WitnessStore(tmp_path / "w.db"))


def test_the_head_cosigned_last_at_a_larger_size_is_refused_and_nothing_is_stored(tmp_path):
    f = Federation(f"sqlite:///{tmp_path}/l.db", federation_id=FED)
    f.add_round(1)
    w = _witness(f, tmp_path)
    b1 = f.ledger.block(1)
    assert w.add_checkpoint(request_body(f.writer.checkpoint(), 0, [], [b1.header_bytes])).status == 200
    stored = w.store.latest(ORIGIN)
    size1 = f.writer.log_size
    f.add_round(2)
    size2, b2 = f.writer.log_size, f.ledger.block(2)
    # the dishonest server signs block 2's size and root under the head line of block 1 (whose header says size1)
    lie = sign_checkpoint(Checkpoint(ORIGIN, size2, b2.header.log_root, (head_line(1, b1.hash),)), f.server_key)
    r = w.add_checkpoint(request_body(lie, size1, consistency_proof(f.ledger, size1, size2), []))
    assert r.status == 409 and w.store.latest(ORIGIN) == stored
    # with block 1's header line the checkpoint's size and root do not match it either
    r = w.add_checkpoint(request_body(lie, size1, consistency_proof(f.ledger, size1, size2), [b1.header_bytes]))
    assert r.status != 200 and w.store.latest(ORIGIN) == stored
