"""C2SP tlog-checkpoint bodies in C2SP signed notes, with Ed25519 signatures.

* https://c2sp.org/tlog-checkpoint: the body is ``origin\\nsize\\nbase64(root)\\n``
  followed by optional extension lines.
* https://c2sp.org/signed-note: the note is the body, an empty line, then one
  line per signature ``— NAME base64(key_id || signature)`` where ``key_id``
  is the first 4 bytes of ``SHA-256(NAME || 0x0A || 0x01 || public_key)`` for
  Ed25519 (signature type 0x01), and the signature covers the body bytes.
  A verifier key is written ``NAME+hex(key_id)+base64(0x01 || public_key)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flower_chain.ledger.errors import CheckpointError, KeyFileError
from flower_chain.ledger.keys import public_from_raw, raw_public, verify_signature
from flower_chain.ledger.text import is_decimal

_ALG_ED25519 = 0x01
_DASH = "\u2014"


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: the log's ``origin``, its ``size`` and its root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "\n".join(lines + list(self.extensions)) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint body needs origin, size and root lines")
        origin, size_s, root_b64, *ext = lines
        if not origin or any(not e for e in ext):
            raise CheckpointError("empty line in checkpoint body")
        if not is_decimal(size_s) or (len(size_s) > 1 and size_s[0] == "0"):
            raise CheckpointError(f"checkpoint size {size_s!r} is not a decimal number")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input
            raise CheckpointError("checkpoint root is not base64") from e
        if len(root) != 32:
            raise CheckpointError("checkpoint root is not a 32-byte hash")
        return cls(origin, int(size_s), root, tuple(ext))


def note_key_id(name: str, public: Ed25519PublicKey | bytes) -> bytes:
    raw = public if isinstance(public, bytes) else raw_public(public)
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + raw).digest()[:4]


def verifier_key(name: str, public: Ed25519PublicKey | bytes) -> str:
    """The signed-note verifier key string ``NAME+KEYID+BASE64KEY``."""
    raw = public if isinstance(public, bytes) else raw_public(public)
    return f"{name}+{note_key_id(name, raw).hex()}+{base64.b64encode(bytes([_ALG_ED25519]) + raw).decode()}"


def parse_verifier_key(vkey: str) -> tuple[str, bytes]:
    """Parse ``NAME+KEYID+BASE64KEY``; return the name and raw Ed25519 public key."""
    try:
        name, kid_hex, b64 = vkey.strip().split("+", 2)  # names cannot contain "+"; base64 can
        blob = base64.b64decode(b64, validate=True)
        kid = bytes.fromhex(kid_hex)
    except (ValueError, binascii.Error) as e:
        raise KeyFileError("verifier key must look like NAME+KEYID+BASE64KEY") from e
    if len(blob) != 33 or blob[0] != _ALG_ED25519:
        raise KeyFileError("verifier key is not an Ed25519 key")
    if note_key_id(name, blob[1:]) != kid:
        raise KeyFileError("verifier key id does not match its name and key")
    return name, blob[1:]


def sign_note(body: str, name: str, key: Ed25519PrivateKey) -> str:
    """Return the signed note: ``body``, an empty line, one signature line."""
    if not body.endswith("\n"):
        raise CheckpointError("note body must end with a newline")
    sig = key.sign(body.encode())
    blob = base64.b64encode(note_key_id(name, key.public_key()) + sig).decode()
    return f"{body}\n{_DASH} {name} {blob}\n"


def open_note(note: str, name: str, public: Ed25519PublicKey | bytes) -> str:
    """Verify a signed note against one known key; return its body.

    Signature lines from unknown keys are ignored, as the signed-note spec
    says; the note fails unless one line is a valid signature of ``name`` with
    ``public``.
    """
    raw = public if isinstance(public, bytes) else raw_public(public)
    public_from_raw(raw)
    sep = note.rfind("\n\n")
    if sep < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    body, sig_block = note[: sep + 1], note[sep + 2 :]
    want = note_key_id(name, raw)
    seen_names = []
    for line in sig_block[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise CheckpointError(f"malformed signature line {line!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input
            raise CheckpointError("signature is not base64") from e
        seen_names.append(parts[1])
        if parts[1] == name and blob[:4] == want:
            if len(blob) != 68 or not verify_signature(raw, blob[4:], body.encode()):
                raise CheckpointError(f"the signature of {name} does not verify")
            return body
    raise CheckpointError(f"no signature by {name} with the given key (signed by: {', '.join(seen_names) or 'nobody'})")


def sign_checkpoint(cp: Checkpoint, key: Ed25519PrivateKey) -> str:
    """Sign a checkpoint with the key name equal to its origin."""
    return sign_note(cp.to_text(), cp.origin, key)


def verify_checkpoint(note: str, public: Ed25519PublicKey | bytes, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note; return the checkpoint.

    The signer name must be the checkpoint's origin (and ``origin`` when given).
    """
    first = note.split("\n", 1)[0]
    if origin is not None and first != origin:
        raise CheckpointError(f"checkpoint is for origin {first!r}, expected {origin!r}")
    body = open_note(note, first, public)
    return Checkpoint.from_text(body)
