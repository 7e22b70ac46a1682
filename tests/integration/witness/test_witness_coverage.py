"""``ledger verify --witness`` reports cosignature coverage per trusted key (issue 19, items 7 and 8): which
witness cosigned which heights, which never did; a cosignature line repeated in a stored note counts once."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.audit.witnessed import verify_witnessed
from flower_chain.cli import app
from flower_chain.ledger import open_ledger
from flower_chain.ledger.cosignature import (
    add_cosignatures,
    cosigned_address,
    cosigner_verifier_key,
    note_body,
    sign_cosignature,
)
from tests.conftest import Federation


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def test_coverage_per_trusted_key_and_a_repeated_line_counted_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/w.db"
    f = Federation(uri, n_clients=3, federation_id="fed-cov")
    for rnd in (1, 2, 3):
        f.add_round(rnd, n=2)
    w1, w2, w3 = (Ed25519PrivateKey.generate() for _ in range(3))
    names = ("witness.test/one", "witness.test/two", "witness.test/never")
    vkeys = [cosigner_verifier_key(n, k.public_key()) for n, k in zip(names, (w1, w2, w3))]
    for block in f.ledger.blocks():
        h = block.header.height
        body = note_body(block.checkpoint)
        lines = [sign_cosignature(body, names[0], w1).rstrip("\n")] * (3 if h == 2 else 1)  # block 2: line thrice
        if h in (2, 3):
            lines.append(sign_cosignature(body, names[1], w2).rstrip("\n"))
        f.ledger.put_blob(add_cosignatures(block.checkpoint, lines).encode(), cosigned_address(block.hash))
    f.ledger.close()
    ledger = open_ledger(uri)
    try:
        rep = verify_witnessed(ledger, vkeys, 1)
    finally:
        ledger.close()
    assert rep.ok and rep.counts[2] == 2  # two witnesses, however often one's line is repeated
    assert rep.coverage == {names[0]: [0, 1, 2, 3], names[1]: [2, 3], names[2]: []}
    code, out = cli("ledger", "verify", uri, *(a for v in vkeys for a in ("--witness", v)))
    text = " ".join(out.split())
    assert code == 0, out
    assert "witness witness.test/one: cosigned 4 of 4 checkpoints (heights 0-3)" in text, out
    assert "witness witness.test/two: cosigned 2 of 4 checkpoints (heights 2-3)" in text, out
    assert "witness witness.test/never: never cosigned a checkpoint of this ledger" in text, out


def test_client_cosignature_coverage_per_keyring_key_and_a_repeated_one_counted_once(tmp_path):
    from flower_chain.clients.signing import cosign_checkpoint
    from flower_chain.ledger.entries import CosignatureEntry
    from flower_chain.ledger.keys import key_id

    uri = f"sqlite:///{tmp_path}/c.db"
    f = Federation(uri, n_clients=3, federation_id="fed-ccov")
    f.add_round(1, n=2)
    head = f.writer.head
    before = head.header.model_after
    k0, k1, k2 = f.client_keys
    cos = [
        CosignatureEntry(
            key_id=key_id(k), round=2, size=head.header.log_size, line=cosign_checkpoint(head.checkpoint, k)
        )
        for k in (k0, k0, k0, k1)
    ]  # k0's thrice
    f.writer.append(
        2, [f.update(2, i, base=before) for i in range(2)] + cos, model_before=before, model_after=f.rng.randbytes(32)
    )
    f.ledger.close()
    code, out = cli("ledger", "verify", uri)
    text = " ".join(out.split())
    assert code == 0, out
    assert "client cosignatures checked: 2" in text, out  # k0's three copies count once
    assert f"key {key_id(k0)}: cosigned 1 checkpoints (heights 1)" in text, out
    assert f"key {key_id(k1)}: cosigned 1 checkpoints (heights 1)" in text, out
    assert f"keys that never cosigned: {key_id(k2)}" in text, out
