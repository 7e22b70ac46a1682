"""The verification core shared by :class:`LedgerStrategy` and :class:`LegacyLedgerStrategy`.

Framework-neutral: it sees replies as :class:`Reply` values (arrays as numpy,
metrics as a dict), judges each one, and writes the round's block. It imports
neither torch nor flwr.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import array_digest, decode_arrays, encode_arrays
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.entries import (
    ACCEPTED,
    REJECTED,
    EvaluationEntry,
    GenesisEntry,
    RevocationEntry,
    UpdateEntry,
    UpdateStatement,
    metrics_digest,
)
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import Keyring, load_private, raw_public, verify_signature
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import LedgerWriter, config_digest, origin_for
from flower_chain.ledger import proofs
from flower_chain.ledger.tlog_proof import find_update, prove_inclusion
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_HEAD,
    CTX_HEAD_SIGNATURE,
    CTX_RECEIPT,
    CTX_SERVER_KEY,
    RECEIPT_SEPARATOR,
    LedgerContext,
)

log = logging.getLogger(__name__)
NamedArrays = Sequence[tuple[str, np.ndarray]]

#: With ``store_client_updates=None`` (the default) a round's accepted updates are kept in the blob store
#: when together they hold at most this many bytes of array data.
STORE_UPDATES_LIMIT = 64 * 2**20


@dataclass
class Reply:
    """One client reply, whatever API it came through."""

    node_id: int
    error: str | None = None
    statement: bytes | None = None
    signature: bytes | None = None
    arrays: NamedArrays | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    num_examples: int | None = None
    seen_size: int = -1  # log size of the last checkpoint the client verified
    pending_round: int = -1  # round of the client's update it has no receipt for yet


@dataclass(frozen=True)
class Judgement:
    """The server's verdict on one reply, and the ledger entry that records it."""

    accepted: bool
    reason: str
    detail: str
    entry: UpdateEntry


@dataclass
class _Round:
    ctx: LedgerContext
    template: list[tuple[str, tuple[int, ...], str]]  # name, shape, dtype kind of each global array


def _dtype_kind(a) -> str:
    """What a reply's array must share with the global array: the dtype kind (float, int, ...).

    Float widths may differ: Flower's server-side optimizers (FedAdam, FedYogi,
    FedAdagrad) return float64 models under NumPy 2 while clients train and reply
    in float32. The exact dtype is still signed, inside the array digest.
    """
    return np.asarray(a).dtype.kind


def _finite(a: np.ndarray) -> bool:
    """True when every value is finite.

    Fast path: a NaN or inf makes the dot product a.a non-finite, and BLAS
    computes it in a fraction of isfinite's time; only when the dot product
    is not finite (a bad value, or an overflow of huge finite values) does
    the exact element-wise check decide.
    """
    if a.dtype.kind not in "fc":
        return True
    if a.dtype in (np.float32, np.float64) and a.size:
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(a).all())


class LedgerCore:
    """Checks replies against the ledger context of their round and appends one block per round.

    Parameters
    ----------
    ledger : Ledger or str
        A backend or a ledger URI (created when absent).
    keyring : Keyring, Mapping[str, bytes], str or Path
        Allowed client public keys (a directory of ``*.pub`` files, one file,
        or key id -> raw key). Recorded in the genesis of a new ledger; an
        existing ledger keeps its genesis keyring.
    server_key : Ed25519PrivateKey, str or Path
        The key that signs blocks and checkpoints.
    federation_id : str, optional
        Id of a new federation (default: random); must match an existing ledger's.
    strategy_name : str
        Recorded in the genesis.
    strategy_config : Mapping, optional
        Digest recorded in the genesis.
    store_models : bool
        Keep the global model of every round in the blob store (default True).
    store_client_updates : bool, optional
        Keep every accepted client update in the blob store (what ``flower-chain ledger audit``
        replays the aggregation from). ``None`` (default): for every round whose accepted updates
        hold at most :data:`STORE_UPDATES_LIMIT` (64 MiB) of array data; ``True``: always; ``False``: never.
    anchor : AnchorPublisher or callable, optional
        Publishes every appended block (``flower_chain.anchor``); a callable gets the federation id.
    verify_workers : int, optional
        Threads that hash the replies' arrays and check them for non-finite values
        (``hashlib`` and numpy release the GIL on large buffers). Default: the
        number of CPUs, at most 8; 1 hashes on the calling thread.
    """

    def __init__(self, ledger: Ledger | str, keyring: Keyring | Mapping[str, bytes] | str | Path,
                 server_key: Ed25519PrivateKey | str | Path, *, federation_id: str | None = None,
                 strategy_name: str = "", strategy_config: Mapping[str, Any] | None = None,
                 store_models: bool = True, store_client_updates: bool | None = None, anchor=None,
                 verify_workers: int | None = None) -> None:
        if verify_workers is None:
            verify_workers = min(8, os.cpu_count() or 1)
        if int(verify_workers) < 1:
            raise ValueError(f"verify_workers must be at least 1, not {verify_workers}")
        self.verify_workers = int(verify_workers)
        self._pool: ThreadPoolExecutor | None = None
        self.ledger = open_ledger(ledger, create=True) if isinstance(ledger, str) else ledger
        self.server_key = server_key if isinstance(server_key, Ed25519PrivateKey) else load_private(server_key)
        if isinstance(keyring, (str, Path)):
            keyring = Keyring.from_path(keyring)
        keys = dict(keyring.keys if isinstance(keyring, Keyring) else keyring)
        self.store_models = store_models
        self.store_client_updates = store_client_updates
        self.revoked: set[str] = set()
        self._rounds: dict[tuple[str, int], _Round] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.update_index: dict[tuple[str, int], int] = {}  # (key id, round) -> log index of the train update
        self.node_seen: dict[str, int] = {}  # node id -> checkpoint size it last confirmed
        self.node_pending: dict[str, tuple[str, int]] = {}  # node id -> (key id, round) it wants a receipt for
        self.anchor = None
        existed = self.ledger.block_count() > 0
        if existed:
            report = verify(self.ledger, server_key=raw_public(self.server_key))
            self.writer = LedgerWriter(self.ledger, self.server_key)
            genesis = self.writer.genesis
            if federation_id and federation_id != genesis.federation_id:
                raise LedgerError(f"{self.ledger.uri} records federation {genesis.federation_id!r}, "
                                  f"not {federation_id!r}")
            extra = set(keys) - set(genesis.client_keys)
            if extra:
                log.warning("keys %s are not in the ledger's genesis keyring and will be rejected", sorted(extra))
            self.revoked = set(report.revoked)
            self.last_round = report.last_round
            self.model_digest = report.model_digest
            self.state_digest = report.state_digest
        else:
            if not keys:
                raise LedgerError("the keyring is empty: no client could ever be accepted")
            self.writer = LedgerWriter(self.ledger, self.server_key)
            fid = federation_id or f"fed-{uuid.uuid4().hex[:12]}"
            self._attach_anchor(anchor, fid)  # before the genesis, so the genesis block is anchored too
            config = {str(k): v for k, v in dict(strategy_config or {}).items()}
            digest = config_digest(config)
            self.ledger.put_blob(encode(config), digest)  # the replay (`ledger audit`) rebuilds the strategy from it
            self.writer.init(GenesisEntry(
                federation_id=fid, origin=origin_for(fid), server_key=raw_public(self.server_key),
                client_keys=keys, strategy=strategy_name,
                config_digest=digest, created_ms=int(time.time() * 1000)))
            self.last_round, self.model_digest, self.state_digest = 0, b"", b""
        self.keys = dict(self.writer.genesis.client_keys)
        self.opened_at_round = self.last_round
        if existed:  # earlier blocks were anchored by the earlier run, or are caught up by the CLI
            self._attach_anchor(anchor, self.federation_id)

    def _attach_anchor(self, anchor, federation_id: str) -> None:
        self.anchor = anchor(federation_id) if callable(anchor) else anchor
        if self.anchor is not None:
            self.writer.listeners.append(self.anchor.submit)

    # -- context ---------------------------------------------------------------------------------
    @property
    def federation_id(self) -> str:
        return self.writer.federation_id

    def begin(self, kind: str, server_round: int, arrays: NamedArrays | None) -> LedgerContext:
        """The ledger context of a round; remembers what was sent to check replies against it."""
        self.writer.check_head()
        if kind == "train" and int(server_round) <= self.last_round:
            raise LedgerError(
                f"{self.ledger.uri} already records round {self.last_round} of federation {self.federation_id}; "
                "a new run needs a new ledger (another --ledger or --out)")
        template = [(n, tuple(a.shape), _dtype_kind(a)) for n, a in (arrays or [])]
        digest = array_digest(arrays) if arrays is not None else b""
        ctx = LedgerContext(self.federation_id, int(server_round), self.writer.head_hash, digest)
        self._rounds[(kind, int(server_round))] = _Round(ctx, template)
        if kind == "train" and arrays is not None and self.store_models and not self.ledger.has_blob(digest):
            self.ledger.put_blob(encode_arrays(arrays), digest)  # usually stored already, as last round's result
        return ctx

    def receipt_config(self, node_id: int | str) -> dict[str, Any]:
        """What a node gets with its next instruction: the signed head checkpoint, a consistency proof
        from the checkpoint it last confirmed, and the inclusion proof of its latest update."""
        node = str(node_id)
        head = self.writer.head
        out: dict[str, Any] = {CTX_CHECKPOINT: head.checkpoint, CTX_SERVER_KEY: raw_public(self.server_key),
                               CTX_HEAD: head.header_bytes, CTX_HEAD_SIGNATURE: head.signature,
                               CTX_CONSISTENCY: b"", CTX_CONSISTENCY_FROM: -1}
        seen = self.node_seen.get(node)
        if seen is not None and 0 < seen <= head.header.log_size:
            try:
                proofs.block_with_size(self.ledger, seen)
                out[CTX_CONSISTENCY] = b"".join(proofs.consistency_proof(self.ledger, seen))
                out[CTX_CONSISTENCY_FROM] = seen
            except LedgerError:
                pass  # not a checkpoint this ledger signed: the client will report it
        pending = self.node_pending.get(node)
        if pending is not None:
            kid, first = pending
            receipts = []
            for rnd in range(first, self.last_round + 1):
                index = self.update_index.get((kid, rnd))
                if index is None and rnd <= self.opened_at_round:  # recorded before this process started
                    try:
                        index = find_update(self.ledger, rnd, kid)
                    except LedgerError:
                        index = None
                if index is not None:
                    receipts.append(prove_inclusion(self.ledger, index).to_text())
            out[CTX_RECEIPT] = RECEIPT_SEPARATOR.join(receipts)  # one text: legacy configs hold no lists
        return out

    # -- judging -----------------------------------------------------------------------------------
    def judge_all(self, kind: str, server_round: int, replies: Sequence[Reply]) -> list[Judgement]:
        """Judge a round's replies in order, their arrays hashed and scanned by ``verify_workers`` threads.

        Only the per-reply array work runs in parallel (it depends on nothing but
        the reply); the verdicts are decided one after the other, so ``duplicate``
        goes to the second verified reply of a key exactly as in arrival order.
        """
        replies = list(replies)
        if self.verify_workers > 1 and sum(r.arrays is not None for r in replies) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.verify_workers, thread_name_prefix="flower-chain-verify")
            scans = list(self._pool.map(_scan, replies))
        else:
            scans = [_scan(r) for r in replies]
        seen: set[str] = set()
        return [self.judge(kind, server_round, r, seen, scan=sc) for r, sc in zip(replies, scans)]

    def judge(self, kind: str, server_round: int, reply: Reply, seen: set[str],
              scan: tuple[bytes, str | None] | None = None) -> Judgement:
        """Check one reply; keys whose signature verified are added to ``seen``.

        ``scan`` is :func:`_scan` of the reply when the caller computed it already.
        """
        rnd = self._rounds.get((kind, int(server_round)))
        arrays_digest, nonfinite = scan if scan is not None else _scan(reply)
        reason, detail, kid = self._reason(kind, int(server_round), rnd, reply, arrays_digest, nonfinite, seen)
        accepted = reason == "ok"
        if reply.error is None and reply.statement:
            node = str(reply.node_id)
            if reply.seen_size >= 0:
                self.node_seen[node] = int(reply.seen_size)
            if reply.pending_round >= 0 and kid:
                self.node_pending[node] = (kid, int(reply.pending_round))
            else:
                self.node_pending.pop(node, None)
        entry = UpdateEntry(
            kind=kind, round=int(server_round), node_id=str(reply.node_id), key_id=kid,
            verdict=ACCEPTED if accepted else REJECTED, reason=reason, detail=detail[:500],
            num_examples=int(reply.num_examples) if reply.num_examples is not None else -1,
            arrays_digest=arrays_digest, metrics=_loggable(reply.metrics),
            statement=reply.statement or b"", signature=reply.signature or b"")
        return Judgement(accepted, reason, detail, entry)

    def _reason(self, kind: str, server_round: int, rnd: _Round | None, reply: Reply, arrays_digest: bytes,
                nonfinite: str | None, seen: set[str]) -> tuple[str, str, str]:
        if reply.error is not None:
            return "client-error", reply.error, ""
        if not reply.statement or not reply.signature:
            return "unsigned", "the reply carries no flower-chain signature", ""
        try:
            st = UpdateStatement.from_bytes(reply.statement)
        except LedgerError as e:
            return "malformed", f"statement does not decode: {e}", ""
        kid = st.key_id
        raw = self.keys.get(kid)
        if raw is None:
            return "unknown-key", f"key {kid} is not in the genesis keyring", kid
        if kid in self.revoked:
            return "revoked-key", f"key {kid} was revoked", kid
        if not verify_signature(raw, reply.signature, reply.statement):
            return "bad-signature", "the signature does not verify under the key it names", kid
        if st.kind != kind:
            return "wrong-round", f"statement is for a {st.kind} reply, not {kind}", kid
        if st.federation_id != self.federation_id:
            return "wrong-federation", f"statement is for federation {st.federation_id!r}", kid
        if st.round != server_round or rnd is None:
            return "wrong-round", f"statement is for round {st.round}, this is round {server_round}", kid
        if st.parent != rnd.ctx.parent:
            return "stale-parent", "statement names another ledger head than the one this round was built on", kid
        if kind == "train" and st.base_digest != rnd.ctx.base_digest:
            return "wrong-base-model", "the client trained on other arrays than this round's global model", kid
        if st.arrays_digest != arrays_digest:
            return "digest-mismatch", "the arrays differ from the ones the client signed", kid
        if reply.num_examples is None or st.num_examples != reply.num_examples:
            return "num-examples-mismatch", (f"signed num-examples {st.num_examples}, reply says "
                                             f"{reply.num_examples}"), kid
        if st.metrics_digest != metrics_digest(reply.metrics):
            return "digest-mismatch", "the metrics differ from the ones the client signed", kid
        if reply.num_examples < 0:
            return "malformed", "negative num-examples", kid
        if kid in seen:
            return "duplicate", f"a second verified reply signed by {kid} in this round", kid
        seen.add(kid)
        if kind == "train":
            got = [(n, tuple(a.shape), _dtype_kind(a)) for n, a in reply.arrays or []]
            if got != rnd.template:
                return "malformed", "array names, shapes or dtype kinds differ from the global model", kid
            if nonfinite is not None:
                return "malformed", f"array {nonfinite!r} has non-finite values", kid
        return "ok", "", kid

    # -- recording ---------------------------------------------------------------------------------
    def commit_train(self, server_round: int, judgements: Sequence[Judgement], accepted_arrays: Sequence[NamedArrays],
                     aggregated: NamedArrays | None, seconds: float, state: NamedArrays | None = None) -> None:
        """Append the round's block: every reply judged, the model digests before and after.

        ``state`` is the wrapped strategy's state after the round
        (:func:`flower_chain.strategies.state.strategy_state`); it is stored
        beside the model and its digest recorded as the block's ``state_after``.
        ``None`` keeps the state recorded last.
        """
        rnd = self._rounds.get(("train", int(server_round)))
        before = rnd.ctx.base_digest if rnd else self.model_digest
        t0 = time.perf_counter()
        after = before
        if aggregated is not None:
            after = array_digest(aggregated)
            if self.store_models and not self.ledger.has_blob(after):
                self.ledger.put_blob(encode_arrays(aggregated), after)
        if state is not None:
            self.state_digest = array_digest(state) if state else b""
            if state and self.store_models and not self.ledger.has_blob(self.state_digest):
                self.ledger.put_blob(encode_arrays(state), self.state_digest)
        if self._store_updates(accepted_arrays):
            for arrays in accepted_arrays:
                blob = encode_arrays(arrays)  # a blob's address is its array digest (SHA-256 of the stream)
                self.ledger.put_blob(blob, hashlib.sha256(blob).digest())
        block = self.writer.append(server_round, [j.entry for j in judgements], model_before=before,
                                   model_after=after, state_after=self.state_digest)
        for i, j in enumerate(judgements):
            if j.entry.kind == "train" and j.entry.key_id:
                self.update_index.setdefault((j.entry.key_id, int(server_round)), block.header.first_index + i)
        self.model_digest, self.last_round = after, int(server_round)
        reasons = Counter(j.reason for j in judgements if not j.accepted)
        self.stats[int(server_round)] = {
            "accepted": sum(j.accepted for j in judgements), "rejected": sum(not j.accepted for j in judgements),
            "reasons": dict(reasons), "ledger_time_s": seconds + time.perf_counter() - t0,
            "block_height": block.header.height, "log_size": block.header.log_size,
        }
        for j in judgements:
            if not j.accepted:
                log.warning("round %d: rejected reply from node %s (key %s): %s — %s", server_round,
                            j.entry.node_id, j.entry.key_id or "-", j.reason, j.detail)

    def _store_updates(self, accepted_arrays: Sequence[NamedArrays]) -> bool:
        """Whether this round's accepted updates go to the blob store (``ledger audit`` replays them)."""
        if self.store_client_updates is None:  # default: when the round's updates are small enough
            size = sum(np.asarray(a).nbytes for arrays in accepted_arrays for _, a in arrays)
            return size <= STORE_UPDATES_LIMIT
        return bool(self.store_client_updates)

    def commit_evaluation(self, server_round: int, source: str, num_replies: int, metrics: Mapping[str, Any],
                          judgements: Sequence[Judgement] = ()) -> None:
        """Append a block with an evaluation summary (and the judged evaluate replies, if any)."""
        entries: list = [j.entry for j in judgements]
        entries.append(EvaluationEntry(round=int(server_round), source=source, num_replies=int(num_replies),
                                       metrics=_loggable(metrics)))
        self.writer.append(server_round, entries, model_before=self.model_digest, model_after=self.model_digest,
                           state_after=self.state_digest)

    def resume_arrays(self) -> list[tuple[str, np.ndarray]]:
        """The global model after the last recorded round, from the blob store, its digest checked."""
        if not self.model_digest:
            raise LedgerError(f"{self.ledger.uri} records no global model to resume from")
        return self._stored(self.model_digest, "global model")

    def resume_state(self) -> list[tuple[str, np.ndarray]]:
        """The wrapped strategy's state after the last recorded round (empty if it keeps none), digest checked."""
        return self._stored(self.state_digest, "strategy state") if self.state_digest else []

    def _stored(self, digest: bytes, what: str) -> list[tuple[str, np.ndarray]]:
        try:
            arrays = decode_arrays(self.ledger.get_blob(digest))
        except LedgerError as e:
            raise LedgerError(f"cannot resume: the {what} recorded in the ledger is not in its blob store "
                              f"({e}); the run did not store global models (store_models=False)?") from e
        if array_digest(arrays) != digest:
            raise LedgerError(f"cannot resume: the stored {what} does not match the digest in the ledger")
        return arrays

    def revoke(self, kid: str, reason: str) -> None:
        """Append a revocation: later updates signed by ``kid`` are rejected as ``revoked-key``."""
        if kid not in self.keys:
            raise LedgerError(f"key {kid} is not in the genesis keyring")
        self.writer.append(self.last_round, [RevocationEntry(key_id=kid, reason=reason,
                                                             created_ms=int(time.time() * 1000))],
                           model_before=self.model_digest, model_after=self.model_digest,
                           state_after=self.state_digest)
        self.revoked.add(kid)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.anchor is not None:
            self.anchor.close()
        self.ledger.close()


def _scan(reply: Reply) -> tuple[bytes, str | None]:
    """The array digest of a reply (b"" when it has no arrays or they do not hash) and the name of
    its first array with a non-finite value, if any. Pure: safe to run on worker threads."""
    if reply.arrays is None:
        return b"", None
    try:
        digest = array_digest(reply.arrays)
    except (LedgerError, TypeError, ValueError):
        return b"", None
    for name, a in reply.arrays:
        if not _finite(np.asarray(a)):
            return digest, name
    return digest, None


def _loggable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            out[str(k)] = list(v)
        elif hasattr(v, "item"):
            out[str(k)] = v.item()
    return out

