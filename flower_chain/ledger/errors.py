"""Exception types of flower-chain: one per kind of failure, all under :class:`FlowerChainError`.

Every class carries the process exit code the ``flower-chain`` CLI ends with when such an error
escapes a command (``exit_code``): :data:`EXIT_FAILED` (1) when something does not verify (a ledger,
proof or checkpoint, a torn or tampered file), :data:`EXIT_USAGE` (2) for usage and input errors
(a missing file, a wrong URI, a bad key, an unknown round or client). The CLI maps them in one place
(:func:`flower_chain.cli.handle_error`). The ledger's own errors are :class:`LedgerError`; the
packages above it (strategies, clients, anchors, the auditor) derive theirs from it or from
:class:`FlowerChainError`.
"""

from __future__ import annotations

EXIT_OK = 0
"""Exit code: success."""
EXIT_FAILED = 1
"""Exit code: something does not verify."""
EXIT_USAGE = 2
"""Exit code: a usage or input error."""


class FlowerChainError(Exception):
    """Base class of every error flower-chain raises on purpose.

    Attributes
    ----------
    exit_code : int
        The CLI's exit code for this kind of error: :data:`EXIT_USAGE` unless a subclass says
        the failure is a verification failure (:data:`EXIT_FAILED`).
    """

    exit_code: int = EXIT_USAGE


class LedgerError(FlowerChainError):
    """Base class of every error raised by :mod:`flower_chain.ledger` (exit :data:`EXIT_USAGE` unless a
    subclass says otherwise)."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify or is malformed."""

    exit_code = EXIT_FAILED


class EncodingError(LedgerError):
    """Bytes are not a valid canonical encoding (see docs/ledger-format.md)."""

    exit_code = EXIT_FAILED


class CheckpointError(LedgerError):
    """A checkpoint or signed note is malformed, or its signature does not verify."""

    exit_code = EXIT_FAILED


class KeyFileError(LedgerError):
    """A key file is missing, unreadable, or not an Ed25519 key."""

    exit_code = EXIT_USAGE


class LedgerOpenError(LedgerError):
    """A ledger URI or file cannot be opened: wrong scheme, missing file, foreign format."""

    exit_code = EXIT_USAGE


class LedgerCorruptError(LedgerError):
    """Stored ledger data is damaged: a torn or unparsable record.

    ``height`` names the first damaged block where the storage can tell (``None`` otherwise).
    """

    exit_code = EXIT_FAILED
    height: int | None = None


class AppendError(LedgerError):
    """A block cannot be appended: it does not extend the current head."""

    exit_code = EXIT_USAGE


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
    exit_code : int
        :data:`EXIT_FAILED`.
    """

    exit_code = EXIT_FAILED

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

    exit_code = EXIT_USAGE
