"""Public keys that enter flower-chain: small-order and non-canonical Ed25519 points are refused
everywhere, keyrings refuse duplicate key ids and private keys."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flower_chain.ledger.checkpoint import Checkpoint, note_key_id, verify_checkpoint
from flower_chain.ledger.errors import KeyFileError, LedgerError
from flower_chain.ledger.keys import (
    Keyring,
    generate,
    key_id,
    load_public,
    public_from_raw,
    public_key_problem,
    raw_public,
    verify_signature,
)

# The eight points of small order (the 8-torsion of edwards25519), canonical encodings, as listed in
# libsodium's ge25519_has_small_order blocklist, C2SP/CCTV ed25519 vectors ("eight plus six alternative
# encodings") and "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, 2020).
SMALL_ORDER = {
    "identity (order 1)": "0100000000000000000000000000000000000000000000000000000000000000",
    "(0, -1) (order 2)": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "(+sqrt(-1), 0) (order 4)": "0000000000000000000000000000000000000000000000000000000000000000",
    "(-sqrt(-1), 0) (order 4)": "0000000000000000000000000000000000000000000000000000000000000080",
    "order 8 (a)": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order 8 (b)": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order 8 (c)": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order 8 (d)": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
}
# The six alternative (non-canonical) encodings of small-order points: x = 0 with the sign bit set,
# and y = p, p + 1 (= 0, 1 mod p) with either sign bit.
NON_CANONICAL = {
    "identity, sign bit set": "0100000000000000000000000000000000000000000000000000000000000080",
    "(0, -1), sign bit set": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "y = p": "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "y = p, sign bit set": "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "y = p + 1": "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "y = p + 1, sign bit set": "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
}
BAD = {**SMALL_ORDER, **NON_CANONICAL}
IDENTITY = bytes.fromhex(SMALL_ORDER["identity (order 1)"])
# With the identity as public key A, R = identity and S = 0 satisfy [S]B = R + [k]A for every message.
FIXED_SIGNATURE = IDENTITY + bytes(32)


def _pem(raw: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_fixed_signature_is_a_real_danger_without_the_check():
    # what `cryptography` (OpenSSL) does on its own: the identity key "verifies" one signature on any message
    key = Ed25519PublicKey.from_public_bytes(IDENTITY)
    for message in (b"round 1 update", b"anything else"):
        key.verify(FIXED_SIGNATURE, message)  # no exception
        assert not verify_signature(IDENTITY, FIXED_SIGNATURE, message)
        assert not verify_signature(key, FIXED_SIGNATURE, message)


@pytest.mark.parametrize("name", sorted(BAD))
def test_small_order_and_non_canonical_keys_are_refused_everywhere(tmp_path, name):
    raw = bytes.fromhex(BAD[name])
    problem = public_key_problem(raw)
    assert problem is not None
    assert ("small-order" in problem) == (name in SMALL_ORDER)
    with pytest.raises(KeyFileError):
        public_from_raw(raw)
    with pytest.raises(KeyFileError):
        Keyring.from_raw([raw])
    assert not verify_signature(raw, FIXED_SIGNATURE, b"message")
    if name in SMALL_ORDER:  # non-canonical encodings cannot be written as SubjectPublicKeyInfo by cryptography
        (tmp_path / "evil.pub").write_bytes(_pem(raw))
        with pytest.raises(KeyFileError, match="small-order"):
            load_public(tmp_path / "evil.pub")
        generate(tmp_path, "honest")
        with pytest.raises(KeyFileError, match="evil.pub"):
            Keyring.from_path(tmp_path, allow_private_keys=True)


def test_off_curve_and_short_keys_are_refused():
    assert "not a point" in public_key_problem(bytes([2]) + bytes(31))
    assert "32-byte" in public_key_problem(bytes(31))
    assert not verify_signature(bytes(31), bytes(64), b"m")


def test_the_small_order_check_is_exactly_the_eight_torsion_points():
    # [8]P = identity for the listed points; a large-order key plus a torsion point is not small order
    for _ in range(200):
        raw = raw_public(Ed25519PrivateKey.generate())
        assert public_key_problem(raw) is None
    canonical = {bytes.fromhex(h) for h in SMALL_ORDER.values()}
    assert len(canonical) == 8
    assert all("small-order" in public_key_problem(r) for r in canonical)


def test_valid_keys_are_still_accepted(tmp_path):
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    for i, k in enumerate(keys):
        (tmp_path / f"client-{i}.pub").write_bytes(_pem(raw_public(k)))
    ring = Keyring.from_path(tmp_path)
    assert set(ring.keys) == {key_id(k) for k in keys}
    assert Keyring.from_raw(raw_public(k) for k in keys).keys == ring.keys
    signature = keys[0].sign(b"statement")
    assert verify_signature(raw_public(keys[0]), signature, b"statement")
    assert not verify_signature(raw_public(keys[0]), signature, b"another statement")


def test_a_checkpoint_signed_for_a_small_order_server_key_is_refused():
    cp = Checkpoint("flower-chain/fed", 5, bytes(32))
    body = cp.to_text()
    blob = base64.b64encode(note_key_id(cp.origin, IDENTITY) + FIXED_SIGNATURE).decode()
    note = f"{body}\n\u2014 {cp.origin} {blob}\n"
    with pytest.raises(LedgerError):
        verify_checkpoint(note, IDENTITY)


def test_two_files_with_the_same_key_are_an_error_naming_both(tmp_path):
    _priv, pub = generate(tmp_path / "src", "client-0")
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "client-0.pub").write_bytes(pub.read_bytes())
    (ring / "copy-of-client-0.pub").write_bytes(pub.read_bytes())
    with pytest.raises(KeyFileError) as e:
        Keyring.from_path(ring)
    assert "client-0.pub" in str(e.value) and "copy-of-client-0.pub" in str(e.value)


def test_private_keys_in_the_keyring_are_an_error_with_the_fix(tmp_path):
    generate(tmp_path, "client-0")  # client-0.key beside client-0.pub
    with pytest.raises(KeyFileError) as e:
        Keyring.from_path(tmp_path)
    msg = str(e.value)
    assert "client-0.key" in msg and "move private keys out of the keyring" in msg and "*.pub" in msg
    # a private key under a .pub name is caught too
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "client-0.pub").write_bytes((tmp_path / "client-0.key").read_bytes())
    with pytest.raises(KeyFileError, match="private key"):
        Keyring.from_path(ring)
    # a one-machine simulation may opt in explicitly
    assert len(Keyring.from_path(tmp_path, allow_private_keys=True)) == 1


def test_a_keys_init_directory_is_read_as_its_keyring(tmp_path):
    """`flower-chain keys init DIR` writes DIR/keyring/*.pub beside DIR/clients/*.key: DIR itself reads as its
    keyring (what `ledger verify --keys DIR` gets), never as a directory with private keys."""
    from typer.testing import CliRunner

    from flower_chain.cli import app as cli
    from flower_chain.ledger.keys import Keyring

    assert CliRunner().invoke(cli, ["keys", "init", str(tmp_path / "k"), "--clients", "2"]).exit_code == 0
    assert len(Keyring.from_path(tmp_path / "k")) == 2
    assert Keyring.from_path(tmp_path / "k").keys == Keyring.from_path(tmp_path / "k" / "keyring").keys
