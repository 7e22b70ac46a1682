"""Ed25519 keys: files, key ids and keyrings (``cryptography``).

A key id is the first 16 hex digits of SHA-256 over the raw 32-byte public
key. Private keys are PEM (PKCS#8, unencrypted) written with mode 0600;
public keys are PEM (SubjectPublicKeyInfo) in ``NAME.pub``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flower_chain.ledger.errors import KeyFileError

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def raw_public(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a public key (of the public half of a private key)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """The key id of a public key: 16 hex digits of SHA-256 over its raw bytes."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError as e:
        raise KeyFileError(f"not a 32-byte Ed25519 public key ({len(raw)} bytes)") from e


def verify_signature(public: Ed25519PublicKey | bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``."""
    if isinstance(public, bytes):
        try:
            public = public_from_raw(public)
        except KeyFileError:
            return False
    try:
        public.verify(bytes(signature), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def generate(directory: str | Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 pair ``NAME.key`` (0600) and ``NAME.pub`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / f"{name}{PRIVATE_SUFFIX}", d / f"{name}{PUBLIC_SUFFIX}"
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise KeyFileError(f"{priv_path} already exists; pick another --name or remove it first")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv_path, pub_path


def load_private(path: str | Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file, with a clear error if that fails."""
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"private key file {p} not found; create one with `flower-chain keys new`")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as e:
        raise KeyFileError(f"{p} is not a readable unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file (a private key file gives its public half)."""
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"public key file {p} not found")
    data = p.read_bytes()
    try:
        if b"PRIVATE KEY" in data:
            return load_private(p).public_key()
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{p} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Keyring:
    """Allowed client public keys, by key id."""

    keys: dict[str, bytes]

    @classmethod
    def from_path(cls, path: str | Path) -> Keyring:
        """Read every ``*.pub`` of a directory, or one public key file."""
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob(f"*{PUBLIC_SUFFIX}"))
            if not files:
                raise KeyFileError(f"no *{PUBLIC_SUFFIX} public keys in {p}; add clients with `flower-chain keys new`")
        elif p.is_file():
            files = [p]
        else:
            raise KeyFileError(f"keyring {p} not found")
        return cls.from_raw(raw_public(load_public(f)) for f in files)

    @classmethod
    def from_raw(cls, raws) -> Keyring:
        return cls({key_id(r): bytes(r) for r in raws})

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys

    def __len__(self) -> int:
        return len(self.keys)
