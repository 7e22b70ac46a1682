"""A witness's cosignature line repeated in a note counts once toward the quorum (issue 19 item 8)."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.checkpoint import Checkpoint, sign_checkpoint
from flower_chain.ledger.cosignature import (
    CosignerKey,
    add_cosignatures,
    sign_cosignature,
    verify_cosigned_checkpoint,
)
from flower_chain.ledger.errors import CheckpointError
from flower_chain.ledger.keys import raw_public


def test_a_repeated_witness_line_counts_once_toward_the_quorum():
    log, w1, w2 = (Ed25519PrivateKey.generate() for _ in range(3))
    note = sign_checkpoint(Checkpoint("example.org/log", 7, bytes(32)), log)
    body = note[: note.index("\n\n") + 1]
    line1 = sign_cosignature(body, "w.example/1", w1)
    line2 = sign_cosignature(body, "w.example/2", w2)
    trusted = [CosignerKey("w.example/1", raw_public(w1)), CosignerKey("w.example/2", raw_public(w2))]
    thrice = add_cosignatures(note, [line1, line1, line1])
    _, valid = verify_cosigned_checkpoint(thrice, raw_public(log), trusted, 1)
    assert list(valid) == ["w.example/1"]
    with pytest.raises(CheckpointError, match="1 valid cosignature"):  # three copies of one witness are not two
        verify_cosigned_checkpoint(thrice, raw_public(log), trusted, 2)
    _, valid = verify_cosigned_checkpoint(add_cosignatures(note, [line1, line2, line1]), raw_public(log), trusted, 2)
    assert sorted(valid) == ["w.example/1", "w.example/2"]
