"""Issue 19 item 4: block headers are inside what witnesses cosign (the checkpoint's ``flower-chain/head`` line).

A dishonest server holding its key re-signs the head block with another ``model_after`` after a witness
cosigned the head's checkpoint, and copies the cosigned note to the new block's address. Before the head
line the checkpoint covered the entries only, so the cosigned note still matched and ``verify --witness``
passed; now the note names the original block hash and the check fails naming the block and both hashes.
This file uses only APIs that predate the head line, so it runs unchanged on the old code (where the first
two tests fail: the rewrite verifies).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.audit.witnessed import verify_witnessed
from flower_chain.cli import app
from flower_chain.ledger import open_ledger
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, sign_checkpoint
from flower_chain.ledger.cosignature import (
    add_cosignatures,
    cosigned_address,
    cosigner_verifier_key,
    note_body,
    sign_cosignature,
)
from flower_chain.ledger.writer import LedgerWriter, origin_for
from tests.conftest import Federation

WITNESS = "witness.test/headers"


def _witnessed_ledger(tmp_path, *, old_format: bool = False):
    """A ledger of 3 rounds, every checkpoint cosigned by one witness (``old_format``: checkpoints without
    the head line, as the writer signed them before it, re-signed by the server key before witnessing)."""
    uri = f"sqlite:///{tmp_path}/h.db"
    f = Federation(uri, n_clients=3, federation_id="fed-head")
    for rnd in (1, 2, 3):
        f.add_round(rnd, n=2)
    f.ledger.close()
    path = f"{tmp_path}/h.db"
    db = sqlite3.connect(path)
    with db:
        if old_format:
            for height, header in db.execute("SELECT height, header FROM blocks").fetchall():
                h = BlockHeader.from_bytes(bytes(header))
                cp = sign_checkpoint(Checkpoint(origin_for(h.federation_id), h.log_size, h.log_root), f.server_key)
                db.execute("UPDATE blocks SET checkpoint = ? WHERE height = ?", (cp, height))
    db.close()
    wkey = Ed25519PrivateKey.generate()
    ledger = open_ledger(uri)
    for block in list(ledger.blocks()):
        line = sign_cosignature(note_body(block.checkpoint), WITNESS, wkey)
        ledger.put_blob(add_cosignatures(block.checkpoint, [line]).encode(), cosigned_address(block.hash))
    ledger.close()
    return f, uri, path, cosigner_verifier_key(WITNESS, wkey.public_key())


def _rewrite_head(f: Federation, uri: str, path: str, *, resign_checkpoint: bool) -> tuple[bytes, bytes]:
    """The dishonest server: re-sign the head block with another ``model_after`` and move its cosigned note
    to the new block's address; ``resign_checkpoint``: also re-sign the stored checkpoint (as a writer of the
    new block would). Returns (original block hash, new block hash)."""
    ledger = open_ledger(uri)
    head = ledger.head()
    assert head is not None
    note = ledger.get_blob(cosigned_address(head.hash))
    ledger.close()
    forged = dataclasses.replace(head.header, model_after=b"\x66" * 32)
    hb = forged.to_bytes()
    checkpoint = head.checkpoint
    if resign_checkpoint:
        new_hash = hashlib.sha256(hb).digest()  # the head line (if any) names the new block
        body = note_body(head.checkpoint).replace(_b64(head.hash), _b64(new_hash))
        checkpoint = sign_checkpoint(Checkpoint.from_text(body), f.server_key)
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE blocks SET header = ?, signature = ?, checkpoint = ? WHERE height = ?",
            (hb, f.server_key.sign(hb), checkpoint, forged.height),
        )
    db.close()
    ledger = open_ledger(uri)
    new = ledger.head()
    assert new is not None and new.header.model_after == b"\x66" * 32
    ledger.put_blob(note, cosigned_address(new.hash))  # the witness's note, now under the forged block
    ledger.close()
    return head.hash, new.hash


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())


def test_a_head_rewritten_after_witnessing_fails_verify_witness_naming_block_and_both_hashes(tmp_path):
    f, uri, path, vkey = _witnessed_ledger(tmp_path)
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 0, out  # the honest ledger verifies, every checkpoint witnessed
    old_hash, new_hash = _rewrite_head(f, uri, path, resign_checkpoint=True)
    code, out = cli("ledger", "verify", uri)
    assert code == 0, out  # re-signed by the server's own key: the ledger alone cannot tell
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 1, out
    assert "NOT VERIFIED" in out and "block 3" in out, out
    assert old_hash.hex() in out and new_hash.hex() in out, out  # what the witness signed, what the ledger holds
    ledger = open_ledger(uri)
    try:
        rep = verify_witnessed(ledger, [vkey], 1)
    finally:
        ledger.close()
    assert not rep.ok and rep.problems and rep.problems[0].startswith("block 3: the witnessed checkpoint")
    assert 3 not in rep.witnessed and rep.uncovered == [3]
    [m] = rep.to_dict()["head_mismatches"]  # the evidence, structured (the report page and --json)
    assert m == {
        "height": 3,
        "ledger_block_hash": new_hash.hex(),
        "named_height": 3,
        "named_block_hash": old_hash.hex(),
    }


def test_a_head_rewritten_without_resigning_its_checkpoint_fails_plain_verify(tmp_path):
    f, uri, path, vkey = _witnessed_ledger(tmp_path)
    old_hash, new_hash = _rewrite_head(f, uri, path, resign_checkpoint=False)
    code, out = cli("ledger", "verify", uri)
    assert code == 1 and "NOT VERIFIED" in out and "block 3" in out, out
    assert old_hash.hex() in out and new_hash.hex() in out, out
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 1, out


def test_an_old_format_ledger_still_verifies_and_is_open_to_the_rewrite(tmp_path):
    """Checkpoints without the head line (ledgers written before it) verify, witnessed; the rewrite of their
    head is what they cannot show (the hole the head line closes for new ledgers)."""
    f, uri, path, vkey = _witnessed_ledger(tmp_path, old_format=True)
    ledger = open_ledger(uri)
    assert all(len(Checkpoint.from_text(note_body(b.checkpoint)).extensions) == 0 for b in ledger.blocks())
    ledger.close()
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 0, out
    _rewrite_head(f, uri, path, resign_checkpoint=True)
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 0, out  # no head line: the cosignatures covered the entries only


@pytest.mark.parametrize("height", [1, 3])
def test_a_checkpoint_without_the_head_line_after_one_with_it_fails_verify(tmp_path, height):
    f, uri, path, _ = _witnessed_ledger(tmp_path)
    ledger = open_ledger(uri)
    block = next(ledger.blocks(height, height + 1))
    ledger.close()
    h = block.header
    stripped = sign_checkpoint(Checkpoint(origin_for(h.federation_id), h.log_size, h.log_root), f.server_key)
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE blocks SET checkpoint = ? WHERE height = ?", (stripped, height))
    db.close()
    code, out = cli("ledger", "verify", uri)
    assert code == 1 and f"block {height}" in out and "flower-chain/head" in out, out


def test_an_old_format_ledger_appended_by_this_writer_names_the_heads_it_adds_and_verifies(tmp_path):
    f, uri, path, vkey = _witnessed_ledger(tmp_path, old_format=True)
    f.ledger = open_ledger(uri)
    f.writer = LedgerWriter(f.ledger, f.server_key)
    f.add_round(4, n=2)
    blocks = list(f.ledger.blocks())
    f.ledger.close()
    assert [len(Checkpoint.from_text(note_body(b.checkpoint)).extensions) for b in blocks] == [0, 0, 0, 0, 1]
    code, out = cli("ledger", "verify", uri)
    assert code == 0, out
    code, out = cli("ledger", "verify", uri, "--witness", vkey)
    assert code == 1 and "blocks 4..4 follow the last checkpoint" in out, out  # block 4 is not witnessed yet
