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
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flower_chain.ledger.errors import CheckpointError, KeyFileError
from flower_chain.ledger.keys import public_from_raw, raw_public, verify_signature
from flower_chain.ledger.text import is_decimal, terminal_text

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


HEAD_TAG = "flower-chain/head"
"""First word of the checkpoint extension line naming the log's head block (docs/ledger-format.md §5.1)."""


def head_line(height: int, block_hash: bytes) -> str:
    """The extension line ``flower-chain/head <height> <base64 block hash>`` (no newline)."""
    if len(block_hash) != 32 or not 0 <= int(height) < 2**63:
        raise CheckpointError("a head line names a height in 0..2**63-1 and a 32-byte block hash")
    return f"{HEAD_TAG} {int(height)} {base64.b64encode(bytes(block_hash)).decode()}"


@dataclass(frozen=True)
class HeadLine:
    """What a checkpoint's head line names: the height and hash of the block the log ends with."""

    height: int
    block_hash: bytes


def head_of(cp: Checkpoint) -> HeadLine | None:
    """The head line of a checkpoint (``None`` when it has none).

    Raises
    ------
    CheckpointError
        A line starting with ``flower-chain/head`` that is not exactly ``flower-chain/head HEIGHT BASE64``
        (decimal without leading zeros, canonical padded base64 of 32 bytes), or more than one.
    """
    lines = [e for e in cp.extensions if e.split(" ", 1)[0] == HEAD_TAG]
    if not lines:
        return None
    if len(lines) > 1:
        raise CheckpointError("the checkpoint has more than one head line")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not is_decimal(parts[1]) or (len(parts[1]) > 1 and parts[1][0] == "0"):
        raise CheckpointError(f"malformed head line: not '{HEAD_TAG} HEIGHT BASE64'")
    try:
        block_hash = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError("the head line's block hash is not base64") from e
    if len(block_hash) != 32 or base64.b64encode(block_hash).decode() != parts[2] or int(parts[1]) >= 2**63:
        raise CheckpointError("the head line's block hash is not the canonical base64 of 32 bytes")
    return HeadLine(int(parts[1]), block_hash)


class HeadMismatchError(CheckpointError):
    """A checkpoint's head line names another block than the ledger's block at its size (or none at all).

    Attributes
    ----------
    height : int
        The ledger's block whose checkpoint it is.
    block_hash : bytes
        That block's hash in the ledger.
    named : HeadLine or None
        What the checkpoint names (``None``: no head line where one is required).
    """

    def __init__(self, height: int, block_hash: bytes, named: HeadLine | None) -> None:
        self.height, self.block_hash, self.named = height, bytes(block_hash), named
        if named is None:
            why = (
                f"the checkpoint of block {height} has no {HEAD_TAG} line, but an earlier checkpoint of this "
                f"log has one (every later checkpoint must; the ledger's block {height} has hash {block_hash.hex()})"
            )
        else:
            why = (
                f"the checkpoint names head block {named.height} with hash {named.block_hash.hex()}, the "
                f"ledger's block {height} at its size has hash {block_hash.hex()}"
            )
        super().__init__(why)


def check_head(cp: Checkpoint, height: int, block_hash: bytes, *, required: bool) -> bool:
    """Check that ``cp`` names block ``height`` with hash ``block_hash``; return whether it has a head line.

    ``required``: an earlier checkpoint of the log had a head line (then this one must have it too).

    Raises
    ------
    CheckpointError
        A malformed head line; :class:`HeadMismatchError` when it names another block or is missing
        while ``required``.
    """
    named = head_of(cp)
    if named is None and not required:
        return False
    if named is None or (named.height, named.block_hash) != (int(height), bytes(block_hash)):
        raise HeadMismatchError(int(height), block_hash, named)
    return True


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
    if not _valid_key_name(name):
        raise CheckpointError(
            f"key name {terminal_text(name)!r} is not a signed-note key name (non-empty, no space, "
            "no '+', no control character)"
        )
    sig = key.sign(body.encode())
    blob = base64.b64encode(note_key_id(name, key.public_key()) + sig).decode()
    return f"{body}\n{_DASH} {name} {blob}\n"


MAX_NOTE_CHARS = 1 << 20
"""Longest signed note read (a checkpoint with hundreds of cosignatures is a few tens of KiB)."""
MAX_SIGNATURES = 100
"""Most signature lines a note may carry (as the reference implementation allows)."""


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line ``— NAME BASE64``: the key name, the 4-byte key id and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes


def _valid_key_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space (or other control/separator) and no ``+`` (signed-note spec)."""
    return bool(name) and "+" not in name and not any(c.isspace() or not c.isprintable() for c in name)


def parse_note(note: str) -> tuple[str, tuple[NoteSignature, ...]]:
    """Split a signed note into its text and its signature lines, strictly per https://c2sp.org/signed-note.

    Every line is checked before any signature is looked at, so the answer never depends on the order
    of the lines: a note is refused when it is longer than :data:`MAX_NOTE_CHARS`, contains a control
    character other than newline, has no blank line before its signatures, an empty text, a text or a
    signature block not ending in a newline, a malformed signature line anywhere (not ``— NAME BASE64``,
    a key name with a space or ``+``, base64 that does not decode to at least 5 bytes), more than
    :data:`MAX_SIGNATURES` lines, or two lines for the same key name and key id.

    Returns
    -------
    tuple
        The text (ending in a newline) and the signature lines in note order.

    Raises
    ------
    CheckpointError
        The note is malformed (the message names the first defect; no part of the note is echoed raw).
    """
    if not isinstance(note, str):
        raise CheckpointError("a signed note must be text")
    if len(note) > MAX_NOTE_CHARS:
        raise CheckpointError(f"signed note longer than {MAX_NOTE_CHARS} characters")
    bad = next((c for c in note if c != "\n" and unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise CheckpointError(f"signed note contains the control character U+{ord(bad):04X}")
    sep = note.rfind("\n\n")
    if sep < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    body, lines = note[: sep + 1], note[sep + 2 : -1].split("\n")
    if body == "\n" or body.endswith("\n\n"):  # a text ending in a blank line reads two ways: neither is taken
        raise CheckpointError("signed note with an empty text or an empty line before its blank line")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"signed note with more than {MAX_SIGNATURES} signature lines")
    sigs, seen = [], set()
    for n, line in enumerate(lines, start=1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH or not _valid_key_name(parts[1]):
            raise CheckpointError(f"malformed signature line {n}: not '{_DASH} NAME BASE64'")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input
            raise CheckpointError(f"signature line {n} is not base64") from e
        if len(blob) < 5:
            raise CheckpointError(f"signature line {n} is too short for a key id and a signature")
        if (parts[1], blob[:4]) in seen:
            raise CheckpointError(f"two signature lines for one key (line {n})")
        seen.add((parts[1], blob[:4]))
        sigs.append(NoteSignature(parts[1], blob[:4], blob[4:]))
    return body, tuple(sigs)


def open_note(note: str, name: str, public: Ed25519PublicKey | bytes) -> str:
    """Verify a signed note against one known key; return its text.

    The note is parsed strictly first (:func:`parse_note`: a malformed line anywhere refuses it, wherever
    the valid signature is). Signature lines from unknown keys are then ignored, as the signed-note spec
    says; the note fails unless the one line of ``name`` with ``public``'s key id is a valid signature.

    Raises
    ------
    CheckpointError
        Malformed, not signed by that key, or its signature does not verify.
    """
    raw = public if isinstance(public, bytes) else raw_public(public)
    public_from_raw(raw)
    body, sigs = parse_note(note)
    want = note_key_id(name, raw)
    mine = [s for s in sigs if s.name == name and s.key_id == want]
    if not mine:
        names = ", ".join(sorted({terminal_text(s.name) for s in sigs}))
        raise CheckpointError(f"no signature by {terminal_text(name)} with the given key (signed by: {names})")
    if len(mine[0].signature) != 64 or not verify_signature(raw, mine[0].signature, body.encode()):
        raise CheckpointError(f"the signature of {terminal_text(name)} does not verify")
    return body


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
