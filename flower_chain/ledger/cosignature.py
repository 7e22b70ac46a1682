"""C2SP tlog-cosignature (``cosignature/v1``, Ed25519): witness cosignatures on checkpoints.

https://c2sp.org/tlog-cosignature: a cosignature is a signed-note signature
line ``— NAME base64(key_id || timestamped_signature)`` where

* ``key_id`` is the first 4 bytes of ``SHA-256(NAME || 0x0A || 0x04 || public_key)``
  (signature type 0x04, unlike the 0x01 of ordinary Ed25519 note signatures);
* ``timestamped_signature`` is ``u64 timestamp`` (big-endian POSIX seconds, at
  most 2**63 - 1) followed by the 64-byte Ed25519 signature;
* the signed message is ``"cosignature/v1\\n" || "time " || decimal(timestamp)
  || "\\n"`` followed by the whole checkpoint note body (with its final
  newline and any extension lines, without signature lines).

A cosigner verifier key is written ``NAME+hex(key_id)+base64(0x04 || public_key)``.
This module has no flwr or torch dependency: a log, a client and an auditor
can all use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flower_chain.ledger.checkpoint import Checkpoint, open_note
from flower_chain.ledger.errors import CheckpointError, KeyFileError
from flower_chain.ledger.keys import key_id, public_from_raw, raw_public, verify_signature

if TYPE_CHECKING:
    from flower_chain.ledger.backends.base import Ledger
    from flower_chain.ledger.block import StoredBlock

__all__ = [
    "COSIGNATURE_HEADER",
    "Cosignature",
    "CosignerKey",
    "CLIENT_COSIGNER_PREFIX",
    "add_cosignatures",
    "check_client_cosignature",
    "client_cosigner",
    "client_cosigner_name",
    "cosignature_message",
    "cosigner_key_id",
    "cosigner_verifier_key",
    "note_body",
    "parse_cosignature",
    "parse_cosigner_key",
    "sign_cosignature",
    "verify_cosignature",
    "verify_cosigned_checkpoint",
]

COSIGNATURE_HEADER = "cosignature/v1"
_ALG_COSIGNATURE_V1 = 0x04
_DASH = "\u2014"
_MAX_TIMESTAMP = 2**63 - 1


def _raw(public: Ed25519PublicKey | bytes) -> bytes:
    raw = public if isinstance(public, bytes) else raw_public(public)
    public_from_raw(raw)  # raises KeyFileError unless a 32-byte Ed25519 key
    return raw


def cosigner_key_id(name: str, public: Ed25519PublicKey | bytes) -> bytes:
    """The 4-byte key id ``SHA-256(name || "\\n" || 0x04 || public_key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_COSIGNATURE_V1]) + _raw(public)).digest()[:4]


def cosigner_verifier_key(name: str, public: Ed25519PublicKey | bytes) -> str:
    """The cosigner's vkey ``NAME+KEYID+BASE64(0x04 || public_key)``."""
    raw = _raw(public)
    return f"{name}+{cosigner_key_id(name, raw).hex()}+{base64.b64encode(bytes([_ALG_COSIGNATURE_V1]) + raw).decode()}"


@dataclass(frozen=True)
class CosignerKey:
    """A witness (cosigner) a client trusts: its key name and raw Ed25519 public key."""

    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public)

    def vkey(self) -> str:
        return cosigner_verifier_key(self.name, self.public)


def parse_cosigner_key(vkey: str) -> CosignerKey:
    """Parse a cosigner vkey ``NAME+KEYID+BASE64``; raise :class:`KeyFileError` if malformed."""
    try:
        name, kid_hex, b64 = vkey.strip().split("+", 2)
        blob = base64.b64decode(b64, validate=True)
        kid = bytes.fromhex(kid_hex)
    except (ValueError, binascii.Error) as e:
        raise KeyFileError("cosigner key must look like NAME+KEYID+BASE64KEY") from e
    if not name or any(c.isspace() for c in name):
        raise KeyFileError("cosigner key name must be non-empty without spaces")
    if len(blob) != 33 or blob[0] != _ALG_COSIGNATURE_V1:
        raise KeyFileError("not a cosignature/v1 Ed25519 key (signature type 0x04)")
    if cosigner_key_id(name, blob[1:]) != kid:
        raise KeyFileError("cosigner key id does not match its name and key")
    return CosignerKey(name, blob[1:])


def note_body(note: str) -> str:
    """The body of a signed note (up to and including the newline before the blank line)."""
    sep = note.rfind("\n\n")
    if sep < 0:
        raise CheckpointError("not a signed note: no blank line before the signatures")
    return note[: sep + 1]


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header line, time line, then the checkpoint body."""
    if not body.endswith("\n"):
        raise CheckpointError("checkpoint body must end with a newline")
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise CheckpointError(f"cosignature timestamp {timestamp} is outside 0..2**63-1")
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{body}".encode()


@dataclass(frozen=True)
class Cosignature:
    """One parsed cosignature line."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def to_line(self) -> str:
        blob = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{_DASH} {self.name} {base64.b64encode(blob).decode()}\n"


def sign_cosignature(body: str, name: str, key: Ed25519PrivateKey, timestamp: int | None = None) -> str:
    """Cosign a checkpoint body (or a whole note: its signatures are dropped); return the line.

    Parameters
    ----------
    body : str
        The checkpoint note body, or a signed note.
    name : str
        The cosigner's key name (a schema-less URL by convention).
    key : Ed25519PrivateKey
        The cosigner's key.
    timestamp : int, optional
        POSIX seconds; the current time by default.

    Returns
    -------
    str
        ``— NAME base64(key_id || u64 timestamp || signature)`` with a final newline.
    """
    if "\n\n" in body:
        body = note_body(body)
    ts = int(time.time()) if timestamp is None else int(timestamp)
    sig = key.sign(cosignature_message(body, ts))
    return Cosignature(name, cosigner_key_id(name, key.public_key()), ts, sig).to_line()


def parse_cosignature(line: str) -> Cosignature:
    """Parse one cosignature line (with or without its final newline)."""
    text = line[:-1] if line.endswith("\n") else line
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != _DASH or not parts[1]:
        raise CheckpointError(f"malformed cosignature line {text[:80]!r}")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError("cosignature is not base64") from e
    if len(blob) != 4 + 8 + 64:
        raise CheckpointError(f"a cosignature/v1 Ed25519 signature is 76 bytes, not {len(blob)}")
    (ts,) = struct.unpack(">Q", blob[4:12])
    if ts > _MAX_TIMESTAMP:
        raise CheckpointError("cosignature timestamp exceeds 2**63-1")
    return Cosignature(parts[1], blob[:4], ts, blob[12:])


def verify_cosignature(
    note_or_body: str, line: str | Cosignature, cosigner: CosignerKey, *, max_future_s: int | None = 600
) -> int:
    """Verify one cosignature on a checkpoint; return its timestamp.

    Parameters
    ----------
    note_or_body : str
        The checkpoint note (its signature lines are ignored) or its body.
    line : str or Cosignature
        The cosignature.
    cosigner : CosignerKey
        The trusted witness name and key.
    max_future_s : int or None
        Reject timestamps more than this many seconds ahead of the local clock
        (``None``: no check).

    Raises
    ------
    CheckpointError
        Wrong name or key id, bad signature, or a timestamp in the future.
    """
    cs = parse_cosignature(line) if isinstance(line, str) else line
    body = note_body(note_or_body) if "\n\n" in note_or_body else note_or_body
    if cs.name != cosigner.name or cs.key_id != cosigner.key_id:
        raise CheckpointError(f"cosignature is by {cs.name!r} key {cs.key_id.hex()}, not by {cosigner.name!r}")
    if max_future_s is not None and cs.timestamp > time.time() + max_future_s:
        raise CheckpointError(f"cosignature of {cs.name} has a timestamp in the future ({cs.timestamp})")
    if not verify_signature(cosigner.public, cs.signature, cosignature_message(body, cs.timestamp)):
        raise CheckpointError(f"the cosignature of {cosigner.name} does not verify")
    return cs.timestamp


def add_cosignatures(note: str, lines: Iterable[str]) -> str:
    """Append cosignature lines to a signed note (skipping lines it already holds)."""
    if not note.endswith("\n"):
        raise CheckpointError("a signed note ends with a newline")
    have = set(note[note.rfind("\n\n") + 2 :].splitlines())
    out = note
    for ln in lines:
        for one in ln.splitlines():
            parse_cosignature(one)
            if one not in have:
                out += one + "\n"
                have.add(one)
    return out


def verify_cosigned_checkpoint(
    note: str,
    log_public: Ed25519PublicKey | bytes,
    witnesses: Sequence[CosignerKey],
    quorum: int,
    *,
    origin: str | None = None,
    max_future_s: int | None = 600,
) -> tuple[Checkpoint, dict[str, int]]:
    """Verify a checkpoint signed by the log and cosigned by at least ``quorum`` trusted witnesses.

    Signature lines of unknown keys are ignored, as the signed-note spec says.

    Parameters
    ----------
    note : str
        The checkpoint note with the log's signature and cosignature lines.
    log_public : Ed25519PublicKey or bytes
        The log (server) key; its key name is the checkpoint origin.
    witnesses : sequence of CosignerKey
        Trusted witnesses.
    quorum : int
        How many distinct trusted witnesses must have cosigned.
    origin : str, optional
        The expected origin.

    Returns
    -------
    (Checkpoint, dict)
        The checkpoint and ``{witness name: cosignature timestamp}`` of the valid cosignatures.

    Raises
    ------
    CheckpointError
        The log signature fails, a trusted witness's line does not verify, or
        fewer than ``quorum`` trusted witnesses cosigned.
    """
    first = note.split("\n", 1)[0]
    if origin is not None and first != origin:
        raise CheckpointError(f"checkpoint is for origin {first!r}, expected {origin!r}")
    body = open_note(note, first, log_public)
    cp = Checkpoint.from_text(body)
    trusted = {(w.name, w.key_id): w for w in witnesses}
    valid: dict[str, int] = {}
    for line in note[len(body) + 1 :].splitlines():
        parts = line.split(" ")
        if len(parts) != 3:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            continue
        w = trusted.get((parts[1], blob[:4]))
        if w is None:
            continue  # another key (the log's own line, or an unknown witness)
        valid[w.name] = verify_cosignature(body, line, w, max_future_s=max_future_s)
    if len(valid) < quorum:
        raise CheckpointError(
            f"checkpoint {cp.origin} at size {cp.size} has {len(valid)} valid cosignature(s) "
            f"from trusted witnesses, {quorum} required"
        )
    return cp, valid


#: Key name prefix of a client that cosigns the checkpoints it verified (clients as witnesses).
CLIENT_COSIGNER_PREFIX = "flower-chain/client/"


def client_cosigner_name(raw_client_key: bytes) -> str:
    """The cosigner key name of a client: ``flower-chain/client/<key id>`` (the 16-hex-digit key id)."""
    return CLIENT_COSIGNER_PREFIX + key_id(_raw(raw_client_key))


def client_cosigner(raw_client_key: bytes) -> CosignerKey:
    """A client's Ed25519 update-signing key as a cosigner key (name :func:`client_cosigner_name`)."""
    raw = _raw(raw_client_key)
    return CosignerKey(client_cosigner_name(raw), raw)


def check_client_cosignature(
    line: str, checkpoint_note: str, raw_client_key: bytes, *, max_future_s: int | None = 600
) -> bool:
    """Whether ``line`` is a valid cosignature/v1 of ``checkpoint_note`` by the client key ``raw_client_key``.

    Parameters
    ----------
    line : str
        The cosignature line a client returned (``flower-chain`` record field
        ``cosignature``, or legacy metric ``flower-chain.cosignature``), with or
        without its final newline.
    checkpoint_note : str
        The checkpoint the server sent that client with the instruction (plain or
        cosigned: only its body counts).
    raw_client_key : bytes
        The client's raw 32-byte Ed25519 public key (from the genesis keyring).
    max_future_s : int or None
        Reject timestamps more than this many seconds ahead of the local clock.

    Returns
    -------
    bool
        True only when the line parses, names the client's cosigner key
        (:func:`client_cosigner`) and its signature verifies on the checkpoint body.
    """
    try:
        verify_cosignature(checkpoint_note, line, client_cosigner(raw_client_key), max_future_s=max_future_s)
    except (CheckpointError, KeyFileError):
        return False
    return True


# The cosigned checkpoint a server stores beside each witnessed block (strategies/witnessing.py writes it).
#: Domain tag of the blob address of a block's cosigned checkpoint.
COSIGNED_DOMAIN = b"flower-chain:cosigned:v1\x00"


def cosigned_address(block_hash: bytes) -> bytes:
    """Blob address of a block's cosigned checkpoint: ``SHA-256(COSIGNED_DOMAIN || block hash)``."""
    return hashlib.sha256(COSIGNED_DOMAIN + bytes(block_hash)).digest()


def stored_cosigned_note(ledger: Ledger, block: StoredBlock) -> str | None:
    """The cosigned checkpoint stored for ``block`` (``None`` when no witness cosigned it)."""
    addr = cosigned_address(block.hash)
    if not ledger.has_blob(addr):
        return None
    return ledger.get_blob(addr).decode("utf-8", errors="replace")
