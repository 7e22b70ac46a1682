"""Updates sealed to the auditor (flower_chain.ledger.sealed): they open only with the auditor's key, only as
the update and in the ledger they were sealed for, and any stored bytes that are not such a blob are a
SealedError, never another exception."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flower_chain.ledger.arrays import array_digest, decode_arrays, encode_arrays
from flower_chain.ledger.sealed import (
    HEADER_LEN,
    MAGIC,
    TAG_LEN,
    SealedError,
    load_audit_private,
    load_audit_public,
    open_sealed,
    parse_sealed,
    raw_x25519,
    recipient_id,
    seal,
    sealed_address,
    write_audit_keypair,
)

ORIGIN = "flower-chain/fed-a"


def update(seed: int = 0):
    rng = np.random.default_rng(seed)
    named = [("w", rng.standard_normal((8, 4)).astype(np.float32)), ("b", rng.standard_normal(4).astype(np.float32))]
    return named, encode_arrays(named), array_digest(named)


def test_round_trip_opens_the_exact_stream_and_hides_it():
    key = X25519PrivateKey.generate()
    named, stream, digest = update()
    blob = seal(stream, key.public_key(), ORIGIN, digest)
    assert blob.startswith(MAGIC) and len(blob) == HEADER_LEN + len(stream) + TAG_LEN
    assert stream not in blob and named[0][1].tobytes() not in blob  # no plaintext in the stored bytes
    assert parse_sealed(blob).recipient == recipient_id(key) == hashlib.sha256(raw_x25519(key.public_key())).digest()
    opened = open_sealed(blob, key, ORIGIN, digest)
    assert opened == stream and array_digest(decode_arrays(opened)) == digest
    assert seal(stream, key.public_key(), ORIGIN, digest) != blob  # fresh ephemeral key per seal


def test_wrong_key_is_named():
    key, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    _, stream, digest = update()
    blob = seal(stream, key.public_key(), ORIGIN, digest)
    with pytest.raises(SealedError, match="sealed to another auditor key"):
        open_sealed(blob, other, ORIGIN, digest)
    # a blob whose recipient id was rewritten to the other key still does not open under it
    forged = MAGIC + recipient_id(other) + blob[len(MAGIC) + 32 :]
    with pytest.raises(SealedError, match="does not open"):
        open_sealed(forged, other, ORIGIN, digest)


@pytest.mark.parametrize("where", [HEADER_LEN - 1, HEADER_LEN, -1])  # enc, first ciphertext byte, tag
def test_tampered_bytes_do_not_open(where):
    key = X25519PrivateKey.generate()
    _, stream, digest = update()
    blob = bytearray(seal(stream, key.public_key(), ORIGIN, digest))
    blob[where] ^= 0x01
    with pytest.raises(SealedError, match="does not open"):
        open_sealed(bytes(blob), key, ORIGIN, digest)


def test_bound_to_the_update_digest_and_to_the_ledger():
    key = X25519PrivateKey.generate()
    _, stream, digest = update(1)
    _, _, other_digest = update(2)
    blob = seal(stream, key.public_key(), ORIGIN, digest)
    with pytest.raises(SealedError, match="another update or another ledger"):  # moved to another update
        open_sealed(blob, key, ORIGIN, other_digest)
    with pytest.raises(SealedError, match="another update or another ledger"):  # copied from another ledger
        open_sealed(blob, key, "flower-chain/fed-b", digest)
    assert sealed_address(ORIGIN, digest) != sealed_address(ORIGIN, other_digest)
    assert sealed_address(ORIGIN, digest) != sealed_address("flower-chain/fed-b", digest)
    assert sealed_address(ORIGIN, digest) not in (digest, hashlib.sha256(stream).digest())


@pytest.mark.parametrize("data", [b"", b"FCSEAL", MAGIC + b"\x00" * 10, b"\xff" * 200, "text", None, 12])
def test_anything_that_is_not_a_sealed_blob_is_a_sealed_error(data):
    key = X25519PrivateKey.generate()
    with pytest.raises(SealedError):
        parse_sealed(data)
    with pytest.raises(SealedError):
        open_sealed(data, key, ORIGIN, b"\x00" * 32)


def test_random_bytes_never_raise_anything_else():
    key = X25519PrivateKey.generate()
    rng = np.random.default_rng(7)
    for _ in range(300):
        data = MAGIC + rng.bytes(int(rng.integers(0, 200)))
        with pytest.raises(SealedError):
            open_sealed(data, key, ORIGIN, b"\x01" * 32)


def test_bad_origin_or_digest_is_refused():
    key = X25519PrivateKey.generate()
    with pytest.raises(SealedError, match="origin"):
        seal(b"x", key.public_key(), "", b"\x00" * 32)
    with pytest.raises(SealedError, match="32 bytes"):
        sealed_address(ORIGIN, b"\x00" * 31)


def test_keys_load_from_pem_hex_and_files(tmp_path):
    priv_path, pub_path = write_audit_keypair(tmp_path, "auditor")
    assert stat.S_IMODE(os.stat(priv_path).st_mode) == 0o600
    priv, pub = load_audit_private(priv_path), load_audit_public(pub_path)
    assert recipient_id(priv) == recipient_id(pub)
    assert load_audit_public(str(pub_path)).public_bytes_raw() == pub.public_bytes_raw()
    assert load_audit_public(raw_x25519(pub).hex()).public_bytes_raw() == pub.public_bytes_raw()
    raw_priv = priv.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert recipient_id(load_audit_private(raw_priv.hex())) == recipient_id(pub)
    with pytest.raises(SealedError, match="refusing to overwrite"):
        write_audit_keypair(tmp_path, "auditor")
    with pytest.raises(SealedError, match="not an X25519 public key|neither"):
        load_audit_public(priv_path)  # a private key given where the public one belongs
    with pytest.raises(SealedError, match="cannot read"):
        load_audit_private(tmp_path / "absent.key")
    ed = tmp_path / "ed.pem"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ed.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SealedError, match="Ed25519PublicKey, not an X25519"):
        load_audit_public(ed)


# --- the bytes, as docs/sealed-updates.md specifies them, opened by an independent RFC 9180 implementation ---


def _rfc9180_open(blob: bytes, sk: X25519PrivateKey, origin: str, digest: bytes) -> bytes:
    """Base-mode single-shot Open of DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, written from
    RFC 9180 §4.1, §5.1 and §7 with hmac/hashlib (not through cryptography's HPKE)."""
    import hmac
    import struct

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    def extract(salt, ikm):
        return hmac.new(salt, ikm, hashlib.sha256).digest()

    def expand(prk, info, n):
        out, t, i = b"", b"", 1
        while len(out) < n:
            t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
            out, i = out + t, i + 1
        return out[:n]

    def labeled_extract(suite, salt, label, ikm):
        return extract(salt, b"HPKE-v1" + suite + label + ikm)

    def labeled_expand(suite, prk, label, info, n):
        return expand(prk, struct.pack(">H", n) + b"HPKE-v1" + suite + label + info, n)

    assert blob[:8] == b"FCSEAL\x00\x01"
    recipient, enc, ct = blob[8:40], blob[40:72], blob[72:]
    pk_r = raw_x25519(sk.public_key())
    assert recipient == hashlib.sha256(pk_r).digest()
    kem_suite = b"KEM" + struct.pack(">H", 0x0020)
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    eae_prk = labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared = labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + pk_r, 32)
    suite = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)
    o = origin.encode()
    info = b"flower-chain:sealed-update:v1\x00" + struct.pack(">H", len(o)) + o + digest
    context = (
        b"\x00" + labeled_extract(suite, b"", b"psk_id_hash", b"") + labeled_extract(suite, b"", b"info_hash", info)
    )
    secret = labeled_extract(suite, shared, b"secret", b"")
    key = labeled_expand(suite, secret, b"key", context, 32)
    nonce = labeled_expand(suite, secret, b"base_nonce", context, 12)
    return ChaCha20Poly1305(key).decrypt(nonce, ct, b"")  # single shot: the AAD is empty, info binds


def test_the_specified_bytes_open_with_an_independent_rfc9180_implementation():
    key = X25519PrivateKey.generate()
    _, stream, digest = update(3)
    blob = seal(stream, key.public_key(), ORIGIN, digest)
    assert _rfc9180_open(blob, key, ORIGIN, digest) == stream
    expected = hashlib.sha256(
        b"flower-chain:sealed-address:v1\x00" + len(ORIGIN).to_bytes(2, "big") + ORIGIN.encode() + digest
    ).digest()
    assert sealed_address(ORIGIN, digest) == expected
