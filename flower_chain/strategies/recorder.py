"""The recorder: opens or starts the ledger, appends each round's block, keeps the blobs, resumes.

Accepted client updates are kept in the blob store for every round by default
(``store_client_updates=None`` or ``True``), whatever their size, so that
``flower-chain ledger audit`` can re-derive every round; ``False`` keeps none
(the audit then says NOT AUDITED for those rounds). With ``audit_key`` (an
auditor's X25519 public key) they are kept *sealed* to that key
(:mod:`flower_chain.ledger.sealed`, docs/sealed-updates.md): the server's
disk holds no plaintext update and the server cannot open what it stored.

Imports neither torch nor flwr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION, array_digest, encode_arrays
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.blobs import MISSING, BlobError, read_arrays
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.entries import Entry, EvaluationEntry, GenesisEntry, UpdateEntry
from flower_chain.ledger.errors import AppendError, LedgerError
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.sealed import load_audit_public, seal, sealed_address
from flower_chain.ledger.verify import VerifyReport, verify
from flower_chain.ledger.writer import LedgerWriter, config_digest, origin_for

NamedArrays = Sequence[tuple[str, np.ndarray]]


class Recorder:
    """Owns the ledger writer: genesis, one block per round, model/state/update blobs, resume.

    Parameters
    ----------
    ledger : Ledger
        An open backend.
    server_key : Ed25519PrivateKey
        Signs blocks and checkpoints.
    store_models : bool
        Keep every round's global model and strategy state (default True).
    store_client_updates : bool, optional
        Keep the accepted updates of every round (``None``, the default, and ``True``), or of none
        (``False``: no round can be re-derived by the audit).
    audit_key : X25519PublicKey, str, bytes or Path, optional
        The auditor's X25519 public key (the key, PEM, 64 hex digits, or a file of either): accepted
        updates are stored sealed to it, never in plaintext. Loaded here, so a bad key fails before
        anything is written (:class:`~flower_chain.ledger.sealed.SealedError`).
    """

    def __init__(
        self,
        ledger: Ledger,
        server_key: Ed25519PrivateKey,
        *,
        store_models: bool = True,
        store_client_updates: bool | None = None,
        audit_key=None,
    ) -> None:
        self.ledger = ledger
        self.server_key = server_key
        self.store_models = store_models
        self.store_client_updates = store_client_updates
        self.audit_key = load_audit_public(audit_key) if audit_key is not None else None
        self.writer = LedgerWriter(ledger, server_key)
        self.last_round, self.model_digest, self.state_digest = 0, b"", b""
        self.revoked: set[str] = set()

    @property
    def federation_id(self) -> str:
        return self.writer.federation_id

    @property
    def head(self) -> StoredBlock:
        return self.writer.head

    def open_existing(self, visit=None) -> VerifyReport:
        """Verify the ledger this server continues (``visit(index, entry)`` sees every update entry)."""
        report = verify(self.ledger, server_key=raw_public(self.server_key), visit=visit)
        self.revoked.update(report.revoked)
        self.last_round, self.model_digest, self.state_digest = (
            report.last_round,
            report.model_digest,
            report.state_digest,
        )
        return report

    def start(
        self, fid: str, keys: Mapping[str, bytes], strategy_name: str, strategy_config: Mapping[str, Any] | None
    ) -> None:
        """Append the genesis of federation ``fid``; the strategy's config goes to the blob store."""
        config = {str(k): v for k, v in dict(strategy_config or {}).items()}
        digest = config_digest(config)
        self.ledger.put_blob(encode(config), digest)  # the replay (`ledger audit`) rebuilds the strategy from it
        self.writer.init(
            GenesisEntry(
                federation_id=fid,
                origin=origin_for(fid),
                server_key=raw_public(self.server_key),
                client_keys=dict(keys),
                strategy=strategy_name,
                config_digest=digest,
                created_ms=int(time.time() * 1000),
            )
        )

    def check_parent(self, parent: bytes) -> None:
        """Raise :class:`AppendError` unless the head is still the block a round was configured on.

        The auditor re-derives every verdict against the block's ``prev_hash``;
        a block appended between configuring and committing a round would make
        the recorded verdicts disagree with it.
        """
        if parent != self.writer.head_hash:
            raise AppendError(
                f"{self.ledger.uri}: a block was appended while a round was open; its replies were "
                "judged against another ledger head than the one they would be recorded after"
            )

    @property
    def digest_version(self) -> int:
        """The ledger's array digest version (its genesis'; new ledgers: the current one)."""
        genesis = self.writer.genesis
        return genesis.digest_version if genesis is not None else ARRAY_DIGEST_VERSION

    def digest(self, arrays: NamedArrays) -> bytes:
        """The array digest of ``arrays`` under the ledger's digest version."""
        return array_digest(arrays, self.digest_version)

    def encode(self, arrays: NamedArrays) -> bytes:
        """The blob of ``arrays`` in the ledger's digest version (its stream digest is :meth:`digest`)."""
        return encode_arrays(arrays, self.digest_version)

    def store_model(self, arrays: NamedArrays, digest: bytes | None = None) -> bytes:
        digest = digest or self.digest(arrays)
        if self.store_models and not self.ledger.has_blob(digest):
            self.ledger.put_blob(self.encode(arrays), digest)
        return digest

    @property
    def stores_updates(self) -> bool:
        """Whether accepted updates are kept (``store_client_updates`` is not ``False``)."""
        return self.store_client_updates is None or bool(self.store_client_updates)

    def _update_blobs(self, updates: Sequence[tuple[bytes, NamedArrays]]) -> list[tuple[bytes, bytes]]:
        """(address, blob) of the accepted updates to store: plaintext under the array digest, or sealed."""
        if not self.stores_updates:
            return []
        if self.audit_key is None:
            return [(digest, self.encode(arrays)) for digest, arrays in updates]
        origin = self.writer.genesis.origin
        return [
            (sealed_address(origin, digest), seal(self.encode(arrays), self.audit_key, origin, digest))
            for digest, arrays in updates
        ]

    def commit_train(
        self,
        server_round: int,
        parent: bytes | None,
        before: bytes,
        entries: Sequence[UpdateEntry],
        updates: Sequence[tuple[bytes, NamedArrays]],
        aggregated: NamedArrays | None,
        state: NamedArrays | None,
        evidence: Sequence[tuple[bytes, NamedArrays]] = (),
        *,
        blobs_stored: bool = False,
    ) -> StoredBlock:
        """Append a train round's block: every reply judged, the model digests before and after.

        ``updates``: (array digest, arrays) of the accepted updates, stored unless ``store_client_updates``
        is ``False`` (sealed when an ``audit_key`` is set). ``evidence``: the same for signed replies rejected as ``malformed`` (wrong shape, dtype, a
        non-finite value): always stored, whatever ``store_client_updates`` says — without them an auditor
        could not tell such a rejection from a valid update the server dropped. The digests were computed
        when the replies were judged; a blob's address is its array digest. ``blobs_stored``: both were stored
        already (:meth:`store_updates`, ahead of the block while the round aggregated).
        """
        if parent is not None:
            self.check_parent(parent)
        after = self.store_model(aggregated) if aggregated is not None else before
        state_after = self.state_digest  # taken over only once the block is appended (a failed write changes nothing)
        if state is not None:
            state_after = self.digest(state) if state else b""
            if state and self.store_models and not self.ledger.has_blob(state_after):
                self.ledger.put_blob(self.encode(state), state_after)
        if not blobs_stored:
            self.store_updates(updates, evidence)
        block = self.writer.append(
            server_round, list(entries), model_before=before, model_after=after, state_after=state_after
        )
        self.model_digest, self.state_digest, self.last_round = after, state_after, int(server_round)
        return block

    def store_updates(
        self, updates: Sequence[tuple[bytes, NamedArrays]], evidence: Sequence[tuple[bytes, NamedArrays]] = ()
    ) -> None:
        """Store a train round's update blobs and its malformed replies' evidence (as :meth:`commit_train` does).

        Blobs are content-addressed and written before the block that names them: a crash between the two
        leaves blobs no block names, as a crash inside :meth:`commit_train` would.
        """
        blobs = self._update_blobs(updates) + [(digest, self.encode(arrays)) for digest, arrays in evidence]
        if blobs:
            self.ledger.put_blobs(blobs)

    def commit(self, server_round: int, entries: Sequence[Entry], parent: bytes | None = None) -> StoredBlock:
        """Append a block that leaves the model as it is (evaluation, revocation)."""
        if parent is not None:
            self.check_parent(parent)
        return self.writer.append(
            server_round,
            list(entries),
            model_before=self.model_digest,
            model_after=self.model_digest,
            state_after=self.state_digest,
        )

    def evaluation_entry(
        self, server_round: int, source: str, num_replies: int, metrics: Mapping[str, Any]
    ) -> EvaluationEntry:
        return EvaluationEntry(
            round=int(server_round), source=source, num_replies=int(num_replies), metrics=encodable_metrics(metrics)
        )

    def stored(self, digest: bytes, what: str) -> list[tuple[str, np.ndarray]]:
        """Arrays from the blob store through the one blob reader (:func:`~flower_chain.ledger.blobs.read_arrays`)."""
        try:
            return read_arrays(self.ledger, digest, what, self.digest_version)
        except BlobError as e:
            if e.kind == MISSING:
                raise LedgerError(
                    f"cannot resume: the {what} recorded in the ledger is not in its blob store "
                    f"({e}); the run did not store global models (store_models=False)?"
                ) from e
            raise LedgerError(f"cannot resume: the stored {what} does not match the digest in the ledger ({e})") from e


def encodable_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side metrics (aggregates, centralized evaluation) as values the canonical encoding takes."""
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if hasattr(v, "item") and not isinstance(v, (list, tuple)):
            v = v.item()
        if isinstance(v, bool) or (isinstance(v, int) and -(2**63) <= v < 2**63) or isinstance(v, (float, str)):
            out[str(k)] = v
        elif isinstance(v, (list, tuple)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and -(2**63) <= x < 2**63 for x in v
        ):
            out[str(k)] = [x.item() if hasattr(x, "item") else x for x in v]
    return out
