"""The checkpoint's ``flower-chain/head`` extension line (docs/ledger-format.md §5.1): the test vector, the
strict parser, the check against a ledger's block, and the writer's checkpoints naming their block."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.checkpoint import (
    Checkpoint,
    HeadLine,
    HeadMismatchError,
    check_head,
    head_line,
    head_of,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from flower_chain.ledger.errors import CheckpointError
from tests.conftest import Federation

VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
VECTOR_BODY = (
    b"flower-chain/fed-vector\n5\nSBNJTRN+FjG7owHVrKtue7eqdM4RhdRWVl71HXN2d7I=\n"
    b"flower-chain/head 2 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
)
VECTOR_NOTE = VECTOR_BODY.decode() + (
    "\n\u2014 flower-chain/fed-vector "
    "LUiPoIe+TIYcXUcLHeOx8cw6W627RtgIFsjMNEGN9T0KvmPWyyvYK+vu3aClXQXI5k/zOq/4r4pSGHUtEdcEn3vXHgI=\n"
)
VECTOR_VKEY = "flower-chain/fed-vector+2d488fa0+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c"


def test_the_documented_vector():
    root = hashlib.sha256(b"root").digest()
    hand = b"flower-chain/head 2 " + base64.b64encode(bytes(range(32))) + b"\n"  # the line built by hand
    assert VECTOR_BODY.endswith(hand) and VECTOR_BODY.startswith(b"flower-chain/fed-vector\n5\n")
    cp = Checkpoint("flower-chain/fed-vector", 5, root, (head_line(2, bytes(range(32))),))
    assert cp.to_text().encode() == VECTOR_BODY
    assert sign_checkpoint(cp, VECTOR_KEY) == VECTOR_NOTE  # Ed25519 is deterministic
    assert verifier_key("flower-chain/fed-vector", VECTOR_KEY.public_key()) == VECTOR_VKEY
    got = verify_checkpoint(VECTOR_NOTE, VECTOR_KEY.public_key(), origin="flower-chain/fed-vector")
    assert head_of(got) == HeadLine(2, bytes(range(32)))


@pytest.mark.parametrize(
    "line",
    [
        "flower-chain/head 2",
        "flower-chain/head 02 " + base64.b64encode(bytes(32)).decode(),
        "flower-chain/head -2 " + base64.b64encode(bytes(32)).decode(),
        "flower-chain/head 2 " + base64.b64encode(bytes(31)).decode(),
        "flower-chain/head 2 " + base64.b64encode(bytes(32)).decode().rstrip("="),
        "flower-chain/head 2 " + base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-canonical last digit
        "flower-chain/head 2 " + base64.b64encode(bytes(32)).decode() + " x",
        "flower-chain/head 9223372036854775808 " + base64.b64encode(bytes(32)).decode(),
        "flower-chain/head  2 " + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_a_malformed_head_line_is_refused(line):
    with pytest.raises(CheckpointError):
        head_of(Checkpoint("o", 1, bytes(32), (line,)))


def test_other_extension_lines_are_ignored_and_two_head_lines_refused():
    line = head_line(3, b"\x05" * 32)
    assert head_of(Checkpoint("o", 1, bytes(32), ("example.org/other 1", line))) == HeadLine(3, b"\x05" * 32)
    assert head_of(Checkpoint("o", 1, bytes(32), ("flower-chain/headx 1",))) is None
    with pytest.raises(CheckpointError, match="more than one"):
        head_of(Checkpoint("o", 1, bytes(32), (line, line)))


def test_check_head_names_the_block_or_says_both_hashes():
    cp = Checkpoint("o", 1, bytes(32), (head_line(3, b"\x05" * 32),))
    assert check_head(cp, 3, b"\x05" * 32, required=False) is True
    with pytest.raises(HeadMismatchError) as e:
        check_head(cp, 3, b"\x06" * 32, required=False)
    assert ("05" * 32) in str(e.value) and ("06" * 32) in str(e.value) and e.value.height == 3
    with pytest.raises(HeadMismatchError):
        check_head(cp, 4, b"\x05" * 32, required=False)  # another height, same hash
    bare = Checkpoint("o", 1, bytes(32))
    assert check_head(bare, 3, b"\x05" * 32, required=False) is False  # a ledger from before the line
    with pytest.raises(HeadMismatchError, match="no flower-chain/head line"):
        check_head(bare, 3, b"\x05" * 32, required=True)


def test_every_checkpoint_the_writer_signs_names_its_block():
    f = Federation("memory:", federation_id="fed-line")
    f.add_round(1)
    f.add_round(2)
    for block in f.ledger.blocks():
        cp = verify_checkpoint(block.checkpoint, f.server_key.public_key())
        assert head_of(cp) == HeadLine(block.header.height, block.hash)
