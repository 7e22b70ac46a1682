"""The receipt checker's findings carry their evidence: a fork keeps both signed notes and the proof sent."""

from __future__ import annotations

import time

import pytest

from flower_chain.clients.findings import Fork, ServerKeyChanged
from flower_chain.clients.receipts import ERRORS_LOG, ReceiptKeeper, read_counts
from flower_chain.ledger import open_ledger, proofs
from flower_chain.ledger.entries import GenesisEntry
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.writer import LedgerWriter
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_HEAD,
    CTX_HEAD_SIGNATURE,
    CTX_SERVER_KEY,
)
from tests.conftest import Federation

FED = "fed-u"


def _config(writer: LedgerWriter, consistency_from: int = -1, proof: bytes = b"") -> dict:
    head = writer.head
    return {
        CTX_CHECKPOINT: head.checkpoint,
        CTX_SERVER_KEY: raw_public(writer.server_key),
        CTX_HEAD: head.header_bytes,
        CTX_HEAD_SIGNATURE: head.signature,
        CTX_CONSISTENCY_FROM: consistency_from,
        CTX_CONSISTENCY: proof,
    }


@pytest.fixture
def logs():
    """An honest log and a second log of the same federation under the same server key (a split view)."""
    honest = Federation("memory:", federation_id=FED)
    other = LedgerWriter(open_ledger("memory:", create=True), honest.server_key)
    other.init(
        GenesisEntry(
            federation_id=FED,
            origin=f"flower-chain/{FED}",
            server_key=raw_public(honest.server_key),
            client_keys={key_id(k): raw_public(k) for k in honest.client_keys},
            strategy="FedAvg",
            config_digest=b"\x01" * 32,
            created_ms=int(time.time() * 1000) + 1,
        )
    )
    return honest, other


def test_an_extension_is_consistent_and_finds_nothing(tmp_path, logs):
    honest, _ = logs
    keeper = ReceiptKeeper(tmp_path)
    assert keeper.check(FED, _config(honest.writer), kind="evaluate").findings == []
    honest.add_round(1)
    proof = b"".join(proofs.consistency_proof(honest.ledger, 1, honest.writer.log_size))
    res = keeper.check(FED, _config(honest.writer, 1, proof), kind="evaluate")
    assert res.findings == [] and res.consistent and res.cosignable


def test_a_fork_keeps_both_notes_and_the_proof(tmp_path, logs):
    honest, other = logs
    keeper = ReceiptKeeper(tmp_path)
    seen = honest.writer.head.checkpoint
    assert keeper.check(FED, _config(honest.writer), kind="evaluate").ok
    other.append(1, [], model_before=b"", model_after=b"")
    bogus = bytes(range(32)) * 2
    res = keeper.check(FED, _config(other, 1, bogus), kind="evaluate")
    assert not res.consistent and not res.cosignable and res.errors == 1
    [fork] = res.findings
    assert isinstance(fork, Fork)
    assert (fork.previous_note, fork.note) == (seen, other.head.checkpoint)  # both signed notes: the evidence
    assert fork.proof == (bogus[:32], bogus[32:]) and fork.proof_from == 1 and fork.size == other.log_size
    assert fork.message.startswith(f"FORK: the server's log at size {other.log_size} is not an extension")
    assert fork.message in (keeper.log_dir(FED) / ERRORS_LOG).read_text()
    assert read_counts(tmp_path, FED)["errors"] == 1


def test_another_server_key_is_a_finding_with_both_keys(tmp_path, logs):
    honest, _ = logs
    keeper = ReceiptKeeper(tmp_path, raw_public(honest.server_key))
    stranger = Federation("memory:", federation_id=FED)
    res = keeper.check(FED, _config(stranger.writer), kind="evaluate")
    changed = [f for f in res.findings if isinstance(f, ServerKeyChanged)]
    assert [(c.pinned, c.offered) for c in changed] == [
        (raw_public(honest.server_key), raw_public(stranger.server_key))
    ]
    assert res.errors == len(res.findings) >= 2  # and the checkpoint does not verify under the pinned key
