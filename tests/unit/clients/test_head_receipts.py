"""The client's receipt check binds the head header to its checkpoint's ``flower-chain/head`` line and keeps
the heads it verified: a header re-signed after the fact (another ``model_after``) is noticed with both
headers (issue 19 item 4)."""

from __future__ import annotations

import dataclasses
import hashlib

from flower_chain.clients.findings import CheckpointInvalid, HeadFork, HeadNotNamed
from flower_chain.clients.receipt_store import ReceiptStore
from flower_chain.clients.receipts import ReceiptKeeper
from flower_chain.ledger import proofs
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, head_line, sign_checkpoint
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.writer import origin_for
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_HEAD,
    CTX_HEAD_SIGNATURE,
    CTX_SERVER_KEY,
)
from tests.conftest import Federation

FED = "fed-heads"


def _config(f: Federation, note: str, header: bytes, signature: bytes, seen: int = -1) -> dict:
    proof = b"" if seen < 0 else b"".join(proofs.consistency_proof(f.ledger, seen, f.writer.log_size))
    return {
        CTX_CHECKPOINT: note,
        CTX_SERVER_KEY: raw_public(f.server_key),
        CTX_HEAD: header,
        CTX_HEAD_SIGNATURE: signature,
        CTX_CONSISTENCY_FROM: seen,
        CTX_CONSISTENCY: proof,
    }


def _honest(f: Federation, seen: int = -1) -> dict:
    head = f.writer.head
    return _config(f, head.checkpoint, head.header_bytes, head.signature, seen)


def _forged(f: Federation, header: BlockHeader, *, name_it: bool = True, extensions=None) -> tuple[str, bytes, bytes]:
    """The dishonest server's re-signed header and a checkpoint naming it (or ``extensions`` instead)."""
    hb = header.to_bytes()
    ext = (head_line(header.height, hashlib.sha256(hb).digest()),) if name_it else ()
    cp = Checkpoint(origin_for(FED), header.log_size, header.log_root, ext if extensions is None else extensions)
    return sign_checkpoint(cp, f.server_key), hb, f.server_key.sign(hb)


def _started(tmp_path):
    f = Federation("memory:", federation_id=FED)
    f.add_round(1)
    keeper = ReceiptKeeper(tmp_path)
    res = keeper.check(FED, _honest(f), kind="evaluate")
    assert res.findings == [] and res.cosignable and "\nflower-chain/head 1 " in res.note
    return f, keeper


def test_an_honest_log_finds_nothing_and_keeps_every_head_verified(tmp_path):
    f, keeper = _started(tmp_path)
    size = f.writer.log_size
    f.add_round(2)
    res = keeper.check(FED, _honest(f, size), kind="evaluate")
    assert res.findings == [] and res.cosignable and res.head_hash == f.writer.head.hash
    store = ReceiptStore(tmp_path)
    try:
        assert store.head_at(origin_for(FED), 2) == (f.writer.head.header_bytes, f.writer.head.signature)
        assert store.head_at(origin_for(FED), 1) is not None and store.head_bound(origin_for(FED))
    finally:
        store.close()


def test_the_head_re_signed_with_another_model_is_a_fork_carrying_both_headers(tmp_path):
    f, keeper = _started(tmp_path)
    kept = f.writer.head
    note, hb, sig = _forged(f, dataclasses.replace(kept.header, model_after=b"\x66" * 32))
    res = keeper.check(FED, _config(f, note, hb, sig, kept.header.log_size), kind="evaluate")
    [fork] = res.findings
    assert isinstance(fork, HeadFork) and not res.cosignable and res.header is None
    assert (fork.kept_header, fork.kept_signature, fork.header, fork.signature) == (
        kept.header_bytes,
        kept.signature,
        hb,
        sig,
    )
    assert kept.hash.hex() in fork.message and hashlib.sha256(hb).hexdigest() in fork.message


def test_a_header_other_than_the_one_its_checkpoint_names_is_found_with_both_hashes(tmp_path):
    f, keeper = _started(tmp_path)
    kept = f.writer.head
    forged = dataclasses.replace(kept.header, model_after=b"\x66" * 32).to_bytes()
    res = keeper.check(FED, _config(f, kept.checkpoint, forged, f.server_key.sign(forged)), kind="evaluate")
    [finding] = res.findings
    assert isinstance(finding, HeadNotNamed) and not res.cosignable
    assert (finding.named_height, finding.named_hash) == (1, kept.hash)
    assert finding.head_hash == hashlib.sha256(forged).digest()
    assert kept.hash.hex() in finding.message and finding.head_hash.hex() in finding.message


def test_a_checkpoint_without_the_head_line_after_one_with_it_is_found(tmp_path):
    f, keeper = _started(tmp_path)
    kept = f.writer.head
    note, hb, sig = _forged(f, kept.header, name_it=False)
    res = keeper.check(FED, _config(f, note, hb, sig, kept.header.log_size), kind="evaluate")
    [finding] = res.findings
    assert isinstance(finding, HeadNotNamed) and finding.named_height is None and not res.cosignable


def test_a_log_that_never_named_its_head_is_accepted(tmp_path):
    """A server written before the head line: its checkpoints name no head, and that is no finding."""
    f = Federation("memory:", federation_id=FED)
    f.add_round(1)
    head = f.writer.head
    note, hb, sig = _forged(f, head.header, name_it=False)
    res = ReceiptKeeper(tmp_path).check(FED, _config(f, note, hb, sig), kind="evaluate")
    assert res.findings == [] and res.cosignable


def test_the_next_block_linking_to_a_rewritten_one_is_a_fork(tmp_path):
    f, keeper = _started(tmp_path)
    kept, size = f.writer.head, f.writer.log_size
    f.add_round(2)  # the same entries, but the server re-signed block 1 and block 2 links to the forgery
    note, hb, sig = _forged(f, dataclasses.replace(f.writer.head.header, prev_hash=b"\x77" * 32))
    res = keeper.check(FED, _config(f, note, hb, sig, size), kind="evaluate")
    [fork] = res.findings
    assert isinstance(fork, HeadFork) and res.consistent and not res.cosignable
    assert fork.kept_header == kept.header_bytes and fork.header == hb and "77777777" in fork.message


def test_a_malformed_head_line_is_an_invalid_checkpoint(tmp_path):
    f = Federation("memory:", federation_id=FED)
    f.add_round(1)
    head = f.writer.head
    for ext in (("flower-chain/head 01 " + "A" * 43 + "=",), ("flower-chain/head 1",), ("flower-chain/head x y",)):
        note, hb, sig = _forged(f, head.header, extensions=ext)
        res = ReceiptKeeper(tmp_path / str(len(ext[0]))).check(FED, _config(f, note, hb, sig), kind="evaluate")
        assert [type(x) for x in res.findings] == [CheckpointInvalid] and not res.cosignable, ext
