"""Ed25519 keys: files, key ids and keyrings (``cryptography``).

A key id is the first 16 hex digits of SHA-256 over the raw 32-byte public
key. Private keys are PEM (PKCS#8, unencrypted) written with mode 0600;
public keys are PEM (SubjectPublicKeyInfo) in ``NAME.pub``.

Every public key that enters (a keyring file, raw bytes from a genesis or a
server, a signature check) must be a canonical encoding of a point of the
curve that is not of small order (:func:`public_key_problem`): with a
small-order key such as the identity point, ``cryptography`` (OpenSSL)
accepts one fixed signature on *any* message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
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


# -- public key validation (RFC 8032 §5.1.3 decoding, integer arithmetic) --------------------------------
#
# Curve: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p), p = 2^255 - 19, d = -121665/121666. An encoded point is
# 32 bytes little-endian: bits 0..254 are y, bit 255 is the parity ("sign") of x. Decoding:
#   1. y >= p is a non-canonical encoding (the same y has a second encoding y - p): rejected.
#   2. x^2 = u/v with u = y^2 - 1, v = d y^2 + 1 (v is never 0: -1/d is not a square). Since
#      p = 5 (mod 8), the candidate root is x = u v^3 (u v^7)^((p-5)/8) (one exponentiation, as in
#      RFC 8032); if v x^2 = u it is a root, if v x^2 = -u then x sqrt(-1) is one (sqrt(-1) =
#      2^((p-1)/4)); otherwise u/v is not a square and y is not on the curve: rejected.
#   3. x = 0 with the sign bit set is a second encoding of (0, y): non-canonical, rejected.
# The curve group has order 8*L (L prime), so a point P has small order (1, 2, 4 or 8: the identity
# (0, 1), (0, -1), (+-sqrt(-1), 0) and four points of order 8) exactly when [8]P is the identity.
# [8]P is three doublings in projective coordinates (X : Y : Z), x = X/Z, y = Y/Z, with the a = -1
# doubling formulas (Bernstein-Birkner-Joye-Lange-Peters 2008, "dbl-2008-bbjlp"):
#   B = (X+Y)^2, C = X^2, D = Y^2, E = -C, F = E + D, H = Z^2, J = F - 2H,
#   X' = (B - C - D) J,  Y' = F (E - D),  Z' = F J;
# and (X : Y : Z) is the identity (0, 1) when X = 0 and Y = Z.
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _double(X: int, Y: int, Z: int) -> tuple[int, int, int]:
    B = (X + Y) * (X + Y) % _P
    C = X * X % _P
    D = Y * Y % _P
    E = -C % _P
    F = (E + D) % _P
    H = Z * Z % _P
    J = (F - 2 * H) % _P
    return (B - C - D) * J % _P, F * (E - D) % _P, F * J % _P


@lru_cache(maxsize=1 << 16)
def public_key_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not an acceptable Ed25519 public key, or ``None`` when it is.

    Parameters
    ----------
    raw : bytes
        The 32-byte encoding of a point.

    Returns
    -------
    str or None
        ``None`` for a canonical encoding of a curve point of large order; otherwise a reason
        (wrong length, non-canonical encoding, not on the curve, small order).
    """
    raw = bytes(raw)
    if len(raw) != 32:
        return f"not a 32-byte Ed25519 public key ({len(raw)} bytes)"
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= _P:
        return "a non-canonical Ed25519 point encoding (y >= 2^255 - 19)"
    yy = y * y % _P
    u, v = (yy - 1) % _P, (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P  # u v^3 (u v^7)^((p-5)/8)
    vxx = v * x % _P * x % _P
    if vxx != u:  # then x is a root of -u/v: multiply by sqrt(-1), or there is no root
        if vxx != _P - u:
            return "not a point of the Ed25519 curve"
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return "a non-canonical Ed25519 point encoding (x = 0 with the sign bit set)"
    if x & 1 != sign:
        x = _P - x
    X, Y, Z = x, y, 1
    for _ in range(3):
        X, Y, Z = _double(X, Y, Z)
    if X == 0 and Y == Z:
        return "a small-order Ed25519 point (a fixed signature would verify on any message)"
    return None


def check_public_raw(raw: bytes, where: str = "") -> bytes:
    """``raw`` when it is an acceptable Ed25519 public key, else raise :class:`KeyFileError`.

    Parameters
    ----------
    raw : bytes
        32-byte encoded public key.
    where : str, optional
        Where the key came from (a file name), for the error message.
    """
    problem = public_key_problem(bytes(raw))
    if problem is not None:
        raise KeyFileError(
            f"{where + ' holds ' if where else ''}{problem}; not accepted as a public key "
            "(create keys with `flower-chain keys new`)"
        )
    return bytes(raw)


@lru_cache(maxsize=1 << 16)
def _key_object(raw: bytes) -> Ed25519PublicKey | None:
    """The key object of an acceptable raw public key (built once per key), else ``None``."""
    if public_key_problem(raw) is not None:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes; :class:`KeyFileError` for small-order or
    non-canonical points and for anything that is not a curve point."""
    check_public_raw(raw)
    key = _key_object(bytes(raw))
    if key is None:
        raise KeyFileError(f"not a 32-byte Ed25519 public key ({len(raw)} bytes)")
    return key


def verify_signature(public: Ed25519PublicKey | bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` under an acceptable key.

    A small-order, non-canonical or off-curve public key never verifies anything.
    """
    key: Ed25519PublicKey | None
    if isinstance(public, (bytes, bytearray)):
        key = _key_object(bytes(public))
    elif public_key_problem(raw_public(public)) is not None:
        key = None
    else:
        key = public
    if key is None:
        return False
    try:
        key.verify(bytes(signature), message)
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
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
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
    check_public_raw(raw_public(key), str(p))
    return key


@dataclass(frozen=True)
class Keyring:
    """Allowed client public keys, by key id."""

    keys: dict[str, bytes]

    @classmethod
    def from_path(cls, path: str | Path, *, allow_private_keys: bool = False) -> Keyring:
        """Read every ``*.pub`` of a directory, or one public key file.

        Parameters
        ----------
        path : str or Path
            A directory of ``*.pub`` files (or the ``keys init`` directory: its ``keyring/``), or one
            public key file.
        allow_private_keys : bool, optional
            Accept private keys (``*.key``, or PEM private keys) in the keyring. Off by default:
            a server that can read the clients' private keys can forge their signed updates, so
            the keyring must hold public keys only. Only a one-machine simulation, where one
            process holds every key anyway, may turn this on.

        Raises
        ------
        KeyFileError
            No keys; a file that is not an acceptable Ed25519 public key; two files with the
            same key id; a private key in the keyring (unless ``allow_private_keys``).
        """
        p = Path(path)
        if p.is_dir() and not any(p.glob(f"*{PUBLIC_SUFFIX}")) and (p / "keyring").is_dir():
            p = p / "keyring"  # the directory `flower-chain keys init` made
        if p.is_dir():
            if not allow_private_keys:
                private = sorted(p.glob(f"*{PRIVATE_SUFFIX}"))
                if private:
                    raise KeyFileError(
                        f"keyring directory {p} holds the private key {private[0]}"
                        f"{f' (and {len(private) - 1} more)' if len(private) > 1 else ''}: move private keys out "
                        f"of the keyring; the server needs only *{PUBLIC_SUFFIX} (each client keeps its own "
                        f"*{PRIVATE_SUFFIX})"
                    )
            files = sorted(p.glob(f"*{PUBLIC_SUFFIX}"))
            if not files:
                raise KeyFileError(f"no *{PUBLIC_SUFFIX} public keys in {p}; add clients with `flower-chain keys new`")
        elif p.is_file():
            files = [p]
        else:
            raise KeyFileError(f"keyring {p} not found")
        keys: dict[str, bytes] = {}
        origin: dict[str, Path] = {}
        for f in files:
            if not allow_private_keys and b"PRIVATE KEY" in f.read_bytes():
                raise KeyFileError(
                    f"keyring file {f} holds a private key: move private keys out of the keyring; "
                    f"the server needs only the public key (*{PUBLIC_SUFFIX})"
                )
            raw = raw_public(load_public(f))
            kid = key_id(raw)
            if kid in keys:
                raise KeyFileError(
                    f"keyring {p}: {origin[kid]} and {f} hold the same key (key id {kid}); remove one of them"
                )
            keys[kid], origin[kid] = raw, f
        return cls(keys)

    @classmethod
    def from_raw(cls, raws: Iterable[bytes]) -> Keyring:
        """A keyring of raw 32-byte public keys; :class:`KeyFileError` for an unacceptable key."""
        keys: dict[str, bytes] = {}
        for r in raws:
            raw = check_public_raw(bytes(r))
            keys[key_id(raw)] = raw
        return cls(keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys

    def __len__(self) -> int:
        return len(self.keys)
