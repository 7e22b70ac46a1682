"""Exception types of the ledger: one per kind of failure, all under :class:`LedgerError`."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error raised by :mod:`flower_chain.ledger`."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify or is malformed."""


class EncodingError(LedgerError):
    """Bytes are not a valid canonical encoding (see docs/ledger-format.md)."""


class CheckpointError(LedgerError):
    """A checkpoint or signed note is malformed, or its signature does not verify."""


class KeyFileError(LedgerError):
    """A key file is missing, unreadable, or not an Ed25519 key."""


class LedgerOpenError(LedgerError):
    """A ledger URI or file cannot be opened: wrong scheme, missing file, foreign format."""


class LedgerCorruptError(LedgerError):
    """Stored ledger data is damaged: a torn or unparsable record."""


class AppendError(LedgerError):
    """A block cannot be appended: it does not extend the current head."""


class VerificationError(LedgerError):
    """The ledger does not verify; names where (block height, entry index) and what.

    Attributes
    ----------
    height : int | None
        Height of the first block that fails, if known.
    entry : int | None
        Index of the failing entry inside that block, if the failure is an entry.
    what : str
        What mismatched.
    """

    def __init__(self, what: str, *, height: int | None = None, entry: int | None = None) -> None:
        self.height = height
        self.entry = entry
        self.what = what
        where = []
        if height is not None:
            where.append(f"block {height}")
        if entry is not None:
            where.append(f"entry {entry}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + what)


class LedgerConflictError(AppendError):
    """Another writer got there first: the block does not extend the stored head.

    Raised inside the backend's atomic section (a compare-and-swap on the head's height and hash), so
    two servers on one ledger can never fork it: exactly one wins each block, the other gets this.
    """


class LedgerConnectionError(LedgerError):
    """The ledger's database server was lost mid-run and did not come back in time.

    Nothing is half-written (each block is one transaction); restart the server with ``--resume``
    once the database is reachable again.
    """
