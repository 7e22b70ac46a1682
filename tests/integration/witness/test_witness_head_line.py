"""The witness keeps the ``flower-chain/head`` line rules (docs/ledger-format.md §5.1): a header re-signed at
the size and root it cosigned is refused (409), a checkpoint without the line after one with it too (422), a
malformed line is 400; an empty block (a later height at the same size) and an old log are cosigned."""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.checkpoint import Checkpoint, head_line, parse_verifier_key, sign_checkpoint, verifier_key
from flower_chain.ledger.cosignature import parse_cosigner_key, verify_cosignature
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.witness.client import chain_headers, request_body
from flower_chain.witness.server import Witness, WitnessStore
from tests.conftest import Federation

FED = "fed-wh"
ORIGIN = f"flower-chain/{FED}"


def _setup(tmp_path):
    f = Federation(f"sqlite:///{tmp_path}/l.db", federation_id=FED)
    f.add_round(1)
    w = Witness(
        "witness.test/head",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    first = w.add_checkpoint(request_body(f.writer.checkpoint(), 0, []))
    assert first.status == 200, first.body
    return f, w


def _note(f: Federation, height: int, block_hash: bytes | None, *ext: str) -> str:
    h = f.writer.head.header
    lines = (head_line(height, block_hash),) if block_hash is not None else ()
    return sign_checkpoint(Checkpoint(ORIGIN, h.log_size, h.log_root, lines + ext), f.server_key)


def test_a_header_re_signed_at_the_cosigned_size_is_refused_and_nothing_changes(tmp_path):
    f, w = _setup(tmp_path)
    head = f.writer.head
    size = head.header.log_size
    forged = hashlib.sha256(dataclasses.replace(head.header, model_after=b"\x66" * 32).to_bytes()).digest()
    for height in (head.header.height, head.header.height - 1):
        reply = w.add_checkpoint(request_body(_note(f, height, forged), size, []))
        assert reply.status == 409 and reply.body == f"{size}\n".encode(), reply
    assert w.store.latest(ORIGIN) == head.checkpoint  # it keeps what it cosigned
    again = w.add_checkpoint(request_body(head.checkpoint, size, []))  # the same checkpoint: cosigned again
    assert again.status == 200


def test_a_checkpoint_without_the_line_after_one_with_it_is_refused(tmp_path):
    f, w = _setup(tmp_path)
    size, height = f.writer.log_size, f.writer.head.header.height
    f.add_round(2)
    proof = consistency_proof(f.ledger, size)
    bare = w.add_checkpoint(request_body(_note(f, 2, None), size, proof))
    assert bare.status == 422 and b"flower-chain/head" in bare.body
    hdrs = chain_headers(f.ledger, height + 1, f.writer.head.header.height)
    assert w.add_checkpoint(request_body(f.writer.checkpoint(), size, proof, hdrs)).status == 200


def test_a_malformed_head_line_is_400(tmp_path):
    f, w = _setup(tmp_path)
    size = f.writer.log_size
    bad = _note(f, 0, None, "flower-chain/head 01 " + "A" * 43 + "=")
    assert w.add_checkpoint(request_body(bad, size, [])).status == 400


def test_an_empty_block_at_the_same_size_is_cosigned(tmp_path):
    f, w = _setup(tmp_path)
    size = f.writer.log_size
    f.add_block(1, [])  # no entries: the log keeps its size and root, the head moves on
    assert f.writer.log_size == size
    reply = w.add_checkpoint(request_body(f.writer.checkpoint(), size, [], [f.writer.head.header_bytes]))
    assert reply.status == 200
    verify_cosignature(f.writer.checkpoint(), reply.body.decode(), parse_cosigner_key(w.verifier_key))


def test_an_old_log_without_head_lines_is_cosigned_and_may_start_naming_its_head(tmp_path):
    f = Federation(f"sqlite:///{tmp_path}/l.db", federation_id=FED)
    w = Witness(
        "witness.test/head",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    assert w.add_checkpoint(request_body(_note(f, 0, None), 0, [])).status == 200
    size = f.writer.log_size
    f.add_round(1)
    proof = consistency_proof(f.ledger, size)
    assert w.add_checkpoint(request_body(_note(f, 1, None), size, proof)).status == 200
    assert w.add_checkpoint(request_body(f.writer.checkpoint(), f.writer.log_size, [])).status == 200  # first head


def test_a_longer_log_whose_head_height_goes_back_is_refused(tmp_path):
    """Review 2 (R2-1b): more entries need a later block; a head line naming the same or a lower height than
    the one cosigned is refused whatever the size."""
    f, w = _setup(tmp_path)
    cosigned = f.writer.head
    old_size, old_height = cosigned.header.log_size, cosigned.header.height
    f.add_round(2)
    new = f.writer.head
    proof = consistency_proof(f.ledger, old_size, new.header.log_size)
    for height in (old_height, old_height - 1):
        reply = w.add_checkpoint(request_body(_note(f, height, new.hash), old_size, proof))
        assert reply.status == 409, (height, reply)
    assert w.store.latest(ORIGIN) == cosigned.checkpoint
    hdrs = chain_headers(f.ledger, old_height + 1, new.header.height)
    assert w.add_checkpoint(request_body(f.writer.head.checkpoint, old_size, proof, hdrs)).status == 200
