"""The replay's inputs from the blob store: models, strategy state and client updates, each checked first.

A model or state blob is used only when its bytes hash to its address under
the ledger's array digest version. A client update is read from its array
digest (plaintext) or, when the server stored it sealed to the auditor
(:mod:`flower_chain.ledger.sealed`), from its sealed address, opened with the
auditor's private key; the opened array stream must hash to the digest the
client signed (sealing needs only the public key, so the server could seal
anything: the digest check is what binds the content to the client).

What is absent (or sealed to a key not given) raises :class:`Missing`: the
round is reported as not re-derived. What is present but is not what the
ledger names (bytes that do not hash to the digest, do not decode, a sealed
blob that does not open under the auditor's own key) raises :class:`Altered`:
the server's store contradicts what the clients signed, and the round fails.
Both name the update's ledger entry and key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from flower_chain.ledger.arrays import array_digest, array_meta, decode_arrays, first_nonfinite, stream_digest
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.blobs import MISSING, BlobError, read_arrays
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import GenesisEntry, UpdateEntry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.sealed import SealedError, open_sealed, parse_sealed, recipient_id, sealed_address

Named = list[tuple[str, np.ndarray]]


class Altered(Exception):
    """A stored input is present but is not what the ledger names (altered, swapped, or sealed for another)."""


class Missing(Exception):
    """An input of a round is absent (``absent``), altered, sealed without the key, or does not open."""

    def __init__(self, message: str, *, absent: bool = False, sealed: bool = False) -> None:
        super().__init__(message)
        self.absent, self.sealed = absent, sealed


def content_digest(data: bytes, version: int) -> bytes:
    """The address a blob of array-stream bytes must have under the ledger's digest ``version``."""
    return stream_digest(data, version)


@dataclass
class Inputs:
    """Reads and checks one ledger's blobs for the replay.

    Parameters
    ----------
    ledger : Ledger
        The ledger.
    genesis : GenesisEntry
        Its genesis (origin and array digest version).
    audit_key : X25519PrivateKey, optional
        The auditor's private key, which opens sealed updates.
    """

    ledger: Ledger
    genesis: GenesisEntry
    audit_key: Any = None
    sealed_opened: int = 0
    sealed_locked: int = 0

    @property
    def version(self) -> int:
        return int(self.genesis.digest_version)

    def digest(self, named: Named) -> bytes:
        """The array digest of ``named`` under the ledger's digest version."""
        return array_digest(named, self.version)

    def arrays(self, digest: bytes, what: str) -> Named:
        """Arrays stored (in plaintext) under ``digest``, through the one blob reader (address checked)."""
        try:
            return read_arrays(self.ledger, digest, what, self.version)
        except BlobError as e:
            if e.kind == MISSING:
                raise Missing(f"the {e}", absent=True) from None
            raise Altered(str(e)) from None

    def _decoded(self, data: bytes, digest: bytes, what: str) -> Named:
        if content_digest(data, self.version) != digest:
            raise Altered(f"the {what} {digest.hex()[:16]} does not match its digest")
        try:
            return decode_arrays(data)
        except LedgerError as e:
            raise Altered(f"the {what} {digest.hex()[:16]} does not decode: {e}") from None

    def update(self, entry: UpdateEntry, index: int) -> tuple[Named, bool]:
        """(arrays, sealed) of an accepted update, from its plaintext or its sealed blob.

        Raises :class:`Missing` (absent, or sealed without the key) or :class:`Altered`.
        """
        what = f"client update of {entry.key_id} (entry {index})"
        digest = entry.arrays_digest
        try:
            if self.ledger.has_blob(digest):
                return self.arrays(digest, what), False
            address = sealed_address(self.genesis.origin, digest)
            if not self.ledger.has_blob(address):
                raise Missing(f"the {what} is not in the blob store", absent=True)
            blob = self.ledger.get_blob(address)
        except LedgerError as e:
            raise Missing(f"the {what} cannot be read: {e}") from None
        return self._open(blob, digest, what), True

    def _open(self, blob: bytes, digest: bytes, what: str) -> Named:
        try:
            sealed = parse_sealed(blob)
        except SealedError as e:
            raise Altered(f"the sealed {what} is not a sealed blob: {e}") from None
        if self.audit_key is None:
            self.sealed_locked += 1
            raise Missing(
                f"accepted updates are sealed to the auditor key {sealed.recipient.hex()[:16]}: "
                "give its private key with --audit-key",
                sealed=True,
            )
        try:
            plain = open_sealed(blob, self.audit_key, self.genesis.origin, digest)
        except SealedError as e:
            if sealed.recipient != recipient_id(self.audit_key):
                self.sealed_locked += 1
                raise Missing(f"the sealed {what} is {e}", sealed=True) from None
            raise Altered(f"the sealed {what} {e}") from None
        arrays = self._decoded(plain, digest, f"opened {what}")
        self.sealed_opened += 1
        return arrays


def array_rule_break(arrays: Named, model: Named) -> str | None:
    """Why an accepted update breaks the array rules of its round (names, shapes, dtypes, finite), else None.

    ``verify --blobs`` applies these rules to plaintext updates; the audit applies them to the
    updates only it can open (sealed ones).
    """
    got, want = array_meta(arrays), array_meta(model)
    if tuple(got) != tuple(want):
        return "its arrays' names, shapes or dtypes are not the global model's"
    bad = first_nonfinite(arrays)
    return None if bad is None else f"array {bad[:60]!r} has non-finite values"


def read_config(ledger: Ledger, genesis: GenesisEntry) -> tuple[dict[str, Any] | None, str]:
    """The genesis' recorded strategy settings (``None`` when not usable) and why not."""
    try:
        data = ledger.get_blob(genesis.config_digest)
    except LedgerError:
        return None, (
            "the strategy's settings (genesis config_digest) are not in the blob store: "
            "the ledger was written before they were stored"
        )
    if hashlib.sha256(data).digest() != genesis.config_digest:
        return None, "the stored strategy settings do not match the genesis config_digest"
    try:
        config = decode(data)
    except LedgerError as e:
        return None, f"the stored strategy settings do not decode: {e}"
    if not isinstance(config, dict):
        return None, "the stored strategy settings are not a map"
    return config, ""
