"""Reading arrays back from a ledger's blob store: the one reader every consumer uses.

A blob's address is the array digest of its stream under the ledger's digest
version (:func:`flower_chain.ledger.arrays.stream_digest`, the genesis'
``digest_version``). :func:`read_arrays` fetches it, checks it against its
address and decodes it; what goes wrong is
a :class:`BlobError` saying which of three things happened (not stored,
altered, does not decode), so each caller decides what that means for it
(verify: a missing blob is a gap, an altered one a failure; the auditor: a
round it cannot replay).
"""

from __future__ import annotations

import numpy as np

from flower_chain.ledger.arrays import decode_arrays, stream_digest
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import EXIT_FAILED, LedgerError
from flower_chain.ledger.writer import digest_version_of

MISSING, ALTERED, UNDECODABLE = "missing", "altered", "undecodable"


class BlobError(LedgerError):
    """A blob cannot be read back as the arrays its address names.

    Attributes
    ----------
    kind : str
        ``missing`` (not in the blob store, or the store cannot be read), ``altered`` (its bytes do not hash
        to its address) or ``undecodable`` (they do, but are not an array stream).
    digest : bytes
        The blob's address.
    what : str
        What the blob was read as (``global model``, ``strategy state``, ...).
    reason : str
        For ``undecodable``: why.
    """

    exit_code = EXIT_FAILED

    def __init__(self, kind: str, digest: bytes, what: str, reason: str = "") -> None:
        self.kind, self.digest, self.what, self.reason = kind, bytes(digest), what, reason
        short = self.digest.hex()[:16]
        super().__init__(
            {
                MISSING: f"{what} {short} is not in the blob store",
                ALTERED: f"the stored {what} {short} does not match its digest",
                UNDECODABLE: f"the stored {what} {short} does not decode: {reason}",
            }[kind]
        )


def read_arrays(
    ledger: Ledger, digest: bytes, what: str = "blob", version: int | None = None
) -> list[tuple[str, np.ndarray]]:
    """The named arrays stored under ``digest``, the blob checked against its address.

    Parameters
    ----------
    ledger : Ledger
        The ledger whose blob store holds it.
    digest : bytes
        The blob's address.
    what : str
        What it is read as, for the error's text.
    version : int, optional
        The array digest version of its address; default the ledger's (:func:`digest_version_of`).

    Raises
    ------
    BlobError
        Not stored (or unreadable), altered, or not an array stream (:attr:`BlobError.kind`).
    LedgerError
        ``version`` not given and the ledger has no genesis.
    """
    try:
        data = ledger.get_blob(digest)
    except LedgerError:
        raise BlobError(MISSING, digest, what) from None
    if stream_digest(data, digest_version_of(ledger) if version is None else version) != digest:
        raise BlobError(ALTERED, digest, what)
    try:
        return decode_arrays(data)
    except LedgerError as e:
        raise BlobError(UNDECODABLE, digest, what, str(e)) from None
