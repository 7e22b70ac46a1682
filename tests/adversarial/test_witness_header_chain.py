"""Review 2, R2-1: the witness checks the header chain between the head it cosigned last and the new one.

A dishonest server holding its own key has blocks 0..3 cosigned by a real witness, then re-signs an earlier
header (another ``model_after``: same entries, same log size and root) and its checkpoint, appends block 4
(or an empty block 4: same size, later height) on the rewritten chain and submits block 4's checkpoint. The
head line alone let the witness cosign it (the size or height grew) and ``verify --witness`` passed, as a
quorum is needed only on the head. Now the request carries the headers since the witness's head and the
witness refuses a chain that does not link to it (409, both hashes in the body), however the log server
builds the request. The end-to-end test uses only APIs of the code before the fix (there it fails: the
witness cosigns block 4 and ``verify --witness`` passes).
"""

from __future__ import annotations

import base64
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.ledger import open_ledger
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key
from flower_chain.ledger.cosignature import parse_cosigner_key, stored_cosigned_note
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.ledger.writer import LedgerWriter
from flower_chain.strategies.witnessing import Witnessing
from flower_chain.witness import client as witness_client
from flower_chain.witness.client import (
    WitnessConflict,
    WitnessEndpoint,
    WitnessError,
    WitnessPool,
    chain_headers,
    request_body,
)
from flower_chain.witness.server import Witness, WitnessStore
from tests.conftest import Federation
from tests.support.dishonest import rewrite

FED = "fed-chain"
ORIGIN = f"flower-chain/{FED}"


def in_process(witness: Witness, calls: list | None = None):
    """A ``submit``-compatible function that hands the request to ``witness`` directly (no HTTP)."""

    def submit_fn(url, note, old, proof, *, timeout=5.0, headers=()):
        if calls is not None:
            calls.append(len(headers))
        r = witness.add_checkpoint(
            request_body(note, old, proof, headers) if headers else request_body(note, old, proof)
        )
        text = r.body.decode()
        if r.status == 200:
            return text
        if r.status == 409:
            raise WitnessConflict(f"409: {text}", int(text) if text.strip().isdigit() else None, text)
        raise WitnessError(f"HTTP {r.status}: {text}", r.status, text)

    return submit_fn


def witnessed(tmp_path, rounds: int = 3):
    """Blocks 0..rounds, each cosigned by one real witness through the server's Witnessing."""
    path = tmp_path / "l.db"
    f = Federation(f"sqlite:///{path}", federation_id=FED)
    w = Witness(
        "witness.test/chain",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    ws = Witnessing(
        f.ledger, [("http://witness.invalid", w.verifier_key)], quorum=1, timeout=5, submit_fn=in_process(w)
    )
    ws.on_block(f.writer.head)
    for rnd in range(1, rounds + 1):
        ws.on_block(f.add_round(rnd))
    ws.close()
    assert not ws.shortfall
    f.ledger.close()
    return f, w, path


def rewrite_and_append(f: Federation, path, height: int, *, empty: bool):
    """The dishonest server: another ``model_after`` at ``height`` (the chain after it re-linked and every
    checkpoint re-signed with its head line), then one more block, with entries or without."""

    def edit(blocks):
        blocks[height][0]["model_after"] = b"\x66" * 32
        if height + 1 < len(blocks):
            blocks[height + 1][0]["model_before"] = b"\x66" * 32

    rewrite(path, f.server_key, edit, head_lines=True)
    f.ledger = open_ledger(f.uri)
    f.writer = LedgerWriter(f.ledger, f.server_key)
    return f.add_block(4, []) if empty else f.add_round(4)


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())


@pytest.mark.parametrize("empty", [False, True])
def test_a_rewritten_header_then_a_new_block_gathers_no_cosignature_and_fails_verify_witness(tmp_path, empty):
    """The head the witness cosigned (block 3) re-signed, then block 4: the ledger alone still verifies (an
    earlier block re-signed would not: the next round's client statements name its hash)."""
    height = 3
    f, w, path = witnessed(tmp_path)
    code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key)
    assert code == 0, out  # the honest ledger: every checkpoint witnessed
    cosigned = w.store.latest(ORIGIN)
    block4 = rewrite_and_append(f, path, height, empty=empty)
    assert f.ledger.block(height).header.model_after == b"\x66" * 32
    code, out = cli("ledger", "verify", f.uri)
    assert code == 0, out  # re-signed with the server's own key: the ledger alone cannot tell
    ws = Witnessing(
        f.ledger, [("http://witness.invalid", w.verifier_key)], quorum=1, timeout=5, submit_fn=in_process(w)
    )
    ws.on_block(block4)  # a restarted server: it learns the witness's size from a 409 first
    ws.close()
    assert [s.height for s in ws.shortfall] == [4]
    assert stored_cosigned_note(f.ledger, block4) is None
    assert w.store.latest(ORIGIN) == cosigned  # the witness keeps what it cosigned
    f.ledger.close()
    code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key)
    assert code == 1 and "NOT VERIFIED" in out and "NOT witnessed" in out, out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(("height", "empty"), [(3, False), (3, True), (2, False), (1, True)])
def test_the_witness_refuses_every_request_shape_for_the_rewritten_chain_and_names_both_hashes(tmp_path, height, empty):
    f, w, path = witnessed(tmp_path)
    honest = tmp_path / "honest.db"
    shutil.copy(path, honest)
    with open_ledger(f.uri) as before:
        stored_hash, size3 = before.block(3).hash, before.block(3).header.log_size
    block4 = rewrite_and_append(f, path, height, empty=empty)
    forged3 = f.ledger.block(3)
    assert forged3.hash != stored_hash
    proof = consistency_proof(f.ledger, size3, block4.header.log_size) if not empty else []
    for hdrs in ([block4.header_bytes], [forged3.header_bytes, block4.header_bytes], chain_headers(f.ledger, 1, 4)):
        r = w.add_checkpoint(request_body(block4.checkpoint, size3, proof, hdrs))
        assert r.status == 409, (len(hdrs), r)
        assert _b64(stored_hash).encode() in r.body, r.body  # the head it cosigned ...
        assert _b64(forged3.hash).encode() in r.body, r.body  # ... and what this chain has there
    assert w.add_checkpoint(request_body(block4.checkpoint, size3, proof)).status == 422  # no header lines
    # a pool that knows the witness's head sends block 4's header alone: refused, nothing stored
    pool = WitnessPool(
        [WitnessEndpoint("w", parse_cosigner_key(w.verifier_key), size=size3, height=3)], submit_fn=in_process(w)
    )
    note, errors = pool.cosign(f.ledger, block4.checkpoint)
    assert note == block4.checkpoint and "does not link" in errors["w"], errors
    f.ledger.close()
    # the honest block 4 on the original chain is still cosigned
    g = open_ledger(f"sqlite:///{honest}")
    f.ledger, f.writer = g, LedgerWriter(g, f.server_key)
    good = f.add_block(4, []) if empty else f.add_round(4)
    good_proof = consistency_proof(g, size3, good.header.log_size) if not empty else []
    assert w.add_checkpoint(request_body(good.checkpoint, size3, good_proof, [good.header_bytes])).status == 200
    g.close()


def test_an_honest_run_with_skipped_blocks_and_a_long_gap_still_gathers_its_quorum(tmp_path, monkeypatch):
    f, w, _ = witnessed(tmp_path, rounds=1)
    f.ledger = open_ledger(f.uri)
    f.writer = LedgerWriter(f.ledger, f.server_key)
    w2 = Witness(
        "witness.test/second",
        Ed25519PrivateKey.generate(),
        w.logs,
        WitnessStore(tmp_path / "w2.db"),
    )
    calls1, calls2 = [], []
    pools = [
        WitnessPool([WitnessEndpoint("w1", parse_cosigner_key(w.verifier_key))], submit_fn=in_process(w, calls1)),
        WitnessPool([WitnessEndpoint("w2", parse_cosigner_key(w2.verifier_key))], submit_fn=in_process(w2, calls2)),
    ]
    for rnd in (2, 3):
        f.add_round(rnd)
    f.add_block(3, [])  # an empty block on the way
    head = f.add_round(4)
    for pool in pools:  # w1 learns its size from a 409, w2 is at first contact
        note, errors = pool.cosign(f.ledger, head.checkpoint)
        assert errors == {} and pool.witnesses[0].height == head.header.height, errors
    assert calls2 == [1]  # first contact: the head's header alone (trust on first use)
    assert calls1 == [1, 5]  # old 0: a 409 names its size; then from block 1 (that size) to block 5
    monkeypatch.setattr(witness_client, "MAX_HEADERS", 2)  # a gap longer than one request carries
    for rnd in range(5, 10):
        head = f.add_round(rnd)
    calls1.clear()
    note, errors = pools[0].cosign(f.ledger, head.checkpoint)
    assert errors == {} and calls1 == [2, 2, 1], (errors, calls1)  # earlier blocks' checkpoints first
    assert w.store.latest(ORIGIN) == head.checkpoint
    f.ledger.close()
