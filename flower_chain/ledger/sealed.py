"""Client updates sealed to the auditor: HPKE (RFC 9180) base mode to an X25519 key (docs/sealed-updates.md).

With ``audit_key`` set, the server stores each accepted update's array stream
*sealed*: encrypted to the auditor's X25519 public key with HPKE
(DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode,
single shot, through ``cryptography``). The server keeps no private key, so it
cannot open what it stored; ``flower-chain ledger audit --audit-key PRIV``
opens each blob and replays the aggregation bit for bit.

* A sealed blob is ``MAGIC || recipient id (32) || enc (32) || ciphertext``:
  the recipient id is the SHA-256 of the auditor's raw public key, ``enc`` the
  HPKE encapsulated key, the ciphertext the array stream plus a 16-byte tag.
* The HPKE ``info`` binds the ledger's origin and the update's array digest
  (the one the client signed), so a blob opens only as the update it was
  sealed for, in the ledger it was sealed for.
* It lives at :func:`sealed_address`, a hash of the origin and the array
  digest, never the plaintext's digest: nothing in the store is addressed by
  the update's content, and the blob's bytes are fresh per seal.

Pure: imports neither flwr nor torch. Every parse of stored bytes raises
:class:`SealedError` (a :class:`~flower_chain.ledger.errors.LedgerError`), never anything else.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from flower_chain.ledger.errors import LedgerError

#: First bytes of every sealed blob (format version 1).
MAGIC = b"FCSEAL\x00\x01"
#: Domain of the HPKE ``info`` string of version 1.
INFO_DOMAIN = b"flower-chain:sealed-update:v1\x00"
#: Domain of a sealed blob's address in the blob store.
ADDRESS_DOMAIN = b"flower-chain:sealed-address:v1\x00"
#: Lengths of the fixed fields: recipient id, HPKE encapsulated key (X25519), AEAD tag.
ID_LEN, ENC_LEN, TAG_LEN = 32, 32, 16
HEADER_LEN = len(MAGIC) + ID_LEN + ENC_LEN
#: The HPKE suite: KEM 0x0020, KDF 0x0001, AEAD 0x0003 (RFC 9180 §7).
SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
_U16 = struct.Struct(">H")
_HEX = re.compile(r"[0-9a-fA-F]{64}")


class SealedError(LedgerError):
    """A sealed blob that does not parse or open, or an audit key that does not load (the message says which)."""


@dataclass(frozen=True)
class SealedBlob:
    """The parsed fields of a sealed blob (nothing opened)."""

    recipient: bytes
    enc: bytes
    ciphertext: bytes

    @property
    def plaintext_size(self) -> int:
        return len(self.ciphertext) - TAG_LEN


def _origin_bytes(origin: str) -> bytes:
    raw = origin.encode("utf-8") if isinstance(origin, str) else b""
    if not raw or len(raw) > 0xFFFF:
        raise SealedError("a ledger origin of 1 to 65,535 UTF-8 bytes is required to seal or open an update")
    return _U16.pack(len(raw)) + raw


def _digest_bytes(digest: bytes) -> bytes:
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        raise SealedError("an array digest of 32 bytes is required to seal or open an update")
    return bytes(digest)


def info_for(origin: str, digest: bytes) -> bytes:
    """The HPKE ``info`` of the update with array ``digest`` in the ledger of ``origin``."""
    return INFO_DOMAIN + _origin_bytes(origin) + _digest_bytes(digest)


def sealed_address(origin: str, digest: bytes) -> bytes:
    """The blob-store address of the sealed update with array ``digest`` in the ledger of ``origin``."""
    return hashlib.sha256(ADDRESS_DOMAIN + _origin_bytes(origin) + _digest_bytes(digest)).digest()


def raw_x25519(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def recipient_id(key: X25519PublicKey | X25519PrivateKey) -> bytes:
    """SHA-256 of the raw X25519 public key: which auditor key a blob is sealed to."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return hashlib.sha256(raw_x25519(pub)).digest()


def seal(plaintext: bytes, key: X25519PublicKey, origin: str, digest: bytes) -> bytes:
    """Seal an update's array stream (whose array digest is ``digest``) to the auditor ``key``."""
    sealed = SUITE.encrypt(bytes(plaintext), key, info=info_for(origin, digest))
    return MAGIC + recipient_id(key) + sealed


def parse_sealed(blob: bytes) -> SealedBlob:
    """The fields of a sealed blob; :class:`SealedError` when it is not one (any bytes in, never another error)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SealedError(f"a sealed blob is bytes, not {type(blob).__name__}")
    data = bytes(blob)
    if len(data) < HEADER_LEN + TAG_LEN or not data.startswith(MAGIC):
        raise SealedError("not a sealed update blob (wrong magic or shorter than its fixed fields)")
    at = len(MAGIC)
    return SealedBlob(data[at : at + ID_LEN], data[at + ID_LEN : HEADER_LEN], data[HEADER_LEN:])


def open_sealed(blob: bytes, key: X25519PrivateKey, origin: str, digest: bytes) -> bytes:
    """The array stream sealed in ``blob`` for the update ``digest`` of the ledger ``origin``.

    Raises :class:`SealedError` when the blob does not parse, is sealed to another key, or does not open
    (altered, or sealed for another update or another ledger).
    """
    parsed = parse_sealed(blob)
    if parsed.recipient != recipient_id(key):
        raise SealedError(
            f"sealed to another auditor key ({parsed.recipient.hex()[:16]}, not {recipient_id(key).hex()[:16]})"
        )
    try:
        return SUITE.decrypt(parsed.enc + parsed.ciphertext, key, info=info_for(origin, digest))
    except (InvalidTag, ValueError) as e:
        raise SealedError("does not open: altered, or sealed for another update or another ledger") from e


# --- keys ----------------------------------------------------------------------------------------------------


def _text_of(source: str | bytes | Path) -> bytes:
    """Key material given inline (PEM text, 64 hex digits) or as a file path."""
    if isinstance(source, Path):
        try:
            return source.read_bytes()
        except OSError as e:
            raise SealedError(f"cannot read the audit key {str(source)!r}: {e.strerror or e}") from e
    if isinstance(source, str):
        s = source.strip()
        if s.startswith("-----BEGIN") or _HEX.fullmatch(s):
            return s.encode()
        return _text_of(Path(source))
    return bytes(source)


def load_audit_public(source: X25519PublicKey | str | bytes | Path) -> X25519PublicKey:
    """An auditor's X25519 public key: the key, PEM (text or file), or 64 hex digits (text or file)."""
    if isinstance(source, X25519PublicKey):
        return source
    data = _text_of(source).strip()
    try:
        if _HEX.fullmatch(data.decode("ascii", "replace")):
            return X25519PublicKey.from_public_bytes(bytes.fromhex(data.decode()))
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SealedError(f"the audit key is neither an X25519 public key in PEM nor 64 hex digits: {e}") from e
    if not isinstance(key, X25519PublicKey):
        raise SealedError(f"the audit key is a {type(key).__name__}, not an X25519 public key")
    return key


def load_audit_private(source: X25519PrivateKey | str | bytes | Path) -> X25519PrivateKey:
    """An auditor's X25519 private key: the key, PEM (PKCS#8, unencrypted), or 64 hex digits."""
    if isinstance(source, X25519PrivateKey):
        return source
    data = _text_of(source).strip()
    try:
        if _HEX.fullmatch(data.decode("ascii", "replace")):
            return X25519PrivateKey.from_private_bytes(bytes.fromhex(data.decode()))
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SealedError(f"the audit key is neither an X25519 private key in PEM nor 64 hex digits: {e}") from e
    if not isinstance(key, X25519PrivateKey):
        raise SealedError(f"the audit key is a {type(key).__name__}, not an X25519 private key")
    return key


def write_audit_keypair(directory: str | Path, name: str = "audit") -> tuple[Path, Path]:
    """Make an X25519 key pair: ``<name>.audit.key`` (PKCS#8 PEM, mode 0600) and ``<name>.audit.pub`` (PEM).

    Refuses (:class:`SealedError`) to overwrite an existing key.
    """
    d = Path(directory)
    priv_path, pub_path = d / f"{name}.audit.key", d / f"{name}.audit.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise SealedError(f"{p} exists: refusing to overwrite an audit key")
    d.mkdir(parents=True, exist_ok=True)
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv_path, pub_path
