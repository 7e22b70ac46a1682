"""Recording a SecAgg+ round on the ledger (moved out of secagg_workflow.py; docs/secagg.md §3, §5).

:class:`RoundRecording` is the part of the workflow's round that writes: the commit block with the proofs
every live node checks before revealing shares, the masked vectors' blob write (on a thread, overlapping
stage 3 and the unmasking, joined before the result block names their aggregate: a crash in between
leaves a commit block without a result block, which verifies, as a crash during stage 3 always did), and
the result block with the round's statistics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from flwr.common import ndarrays_to_parameters
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from flower_chain.ledger import proofs
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.genesis import keyring_proof
from flower_chain.ledger.secagg import MASKED, RESULT, UNMASK, SecAggEntry, server_record
from flower_chain.strategies.secagg_judge import Verdict

log = logging.getLogger("flower_chain.strategies.secagg_workflow")


class RoundRecording:
    """The ledger writes of one SecAgg+ round (a base of the workflow's ``_Round``, which sets the fields)."""

    wf: Any
    core: Any
    context: Any
    round: int
    round_id: bytes
    header: dict[str, Any]
    head_size: int
    entries: list[SecAggEntry]
    verdicts: dict[str, dict[str, Verdict]]
    figures: dict[str, Any]

    def _note(self, block: StoredBlock) -> str:
        """The block's checkpoint, with the witnesses' cosignatures when the strategy has witnesses."""
        w = getattr(self.core, "witnessing", None)
        note: str = w.note(block) if w is not None else block.checkpoint
        return note

    def _signed(self, block: StoredBlock) -> dict[str, Any]:
        """The block's checkpoint and its signed header (the head its ``flower-chain/head`` line names)."""
        return {"checkpoint": self._note(block), "head": block.header_bytes, "head_signature": block.signature}

    def _commit_block(self, commit: SecAggEntry) -> tuple[int, int, dict[str, Any]]:
        """Append the commit block (stages 0-2 and the ``commit`` record); its index, log size and the proof."""
        self.entries.append(commit)
        base = self.header["base_digest"] or self.core.recorder.model_digest  # the block leaves the model as it is
        self.core.writer.check_head()
        block = self.core.writer.append(
            self.round, self.entries, model_before=base, model_after=base, state_after=self.core.recorder.state_digest
        )
        index = block.header.first_index + len(self.entries) - 1
        self.entries = []
        size = block.header.log_size
        inclusion = b"".join(proofs.inclusion_proof(self.core.ledger, index, size))
        consistency = b"".join(proofs.consistency_proof(self.core.ledger, self.head_size, size))
        proof = {
            **self._signed(block),
            "entry": commit.to_bytes(),
            "index": index,
            "inclusion": inclusion,
            "consistency": consistency,
            **keyring_proof(self.core.ledger, size),
        }
        return index, size, proof

    def _store_masked(self, live: list[str], masked: dict[str, bytes]) -> Background:
        """The live nodes' masked vectors to the blob store, on a thread (:meth:`_commit_result` joins it)."""
        return Background(
            self.core.ledger.put_blobs, [(masked[n], self.verdicts[MASKED][n].payload.pop("vector")) for n in live]
        )

    def _commit_result(self, live: list[str], named, agg_digest: bytes, failure: str, store: Background) -> None:
        store.join()  # the masked vectors are durable before the result block names their aggregate
        before = self.header["base_digest"] or self.core.recorder.model_digest
        after = self.core.recorder.digest(named) if named is not None else before  # the genesis' version
        self.entries.append(
            server_record(
                self.round,
                RESULT,
                {
                    "round_id": self.round_id,
                    "live": live if not failure else [],
                    "aggregate_digest": agg_digest,
                    "names": [n for n, _ in named] if named else [],
                    "dtypes": [str(a.dtype) for _, a in named] if named else [],
                    "model_after": after,
                    "failure": failure,
                },
            )
        )
        self.core.recorder.commit_train(self.round, None, before, self.entries, [], named, None)
        self.figures.update(failure=failure, unmasked=sum(v.accepted for v in self.verdicts[UNMASK].values()))
        rejected = [e for s in self.verdicts.values() for e in (v.entry for v in s.values()) if e.verdict != "accepted"]
        self.core.stats[self.round] = {
            "accepted": len(live) if not failure else 0,
            "rejected": len(rejected),
            "reasons": {r: sum(e.reason == r for e in rejected) for r in sorted({e.reason for e in rejected})},
            "block_height": self.core.writer.head.header.height,
            "log_size": self.core.writer.log_size,
        }
        if failure:
            log.error("[flower-chain] SecAgg+ round %d failed: %s (the model stays)", self.round, failure)
            return
        arrays = [a for _, a in named]
        self.context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(arrays), True
        )
        self.context.history.add_metrics_distributed_fit(server_round=self.round, metrics={})
        log.info(
            "[flower-chain] SecAgg+ round %d: aggregate of %d masked inputs (%d dropped)",
            self.round,
            len(live),
            self.figures.get("dropped", 0),
        )


class Background(threading.Thread):
    """``fn(arg)`` on a thread; :meth:`join` re-raises what it raised (a storage failure stops the run)."""

    def __init__(self, fn: Callable[[Any], object], arg: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.arg = fn, arg
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.fn(self.arg)
        except BaseException as e:  # noqa: BLE001 - handed to the round's thread
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None  # raised once: the round's ``finally`` joins again
            raise error
