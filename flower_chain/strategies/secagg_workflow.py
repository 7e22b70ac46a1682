"""LedgerSecAggPlusWorkflow: Flower's SecAgg+ with every stage judged and recorded on the ledger.

A drop-in for ``flwr.server.workflow.SecAggPlusWorkflow`` inside ``DefaultWorkflow``, with a
:class:`~flower_chain.strategies.LegacyLedgerStrategy` as the ``ServerApp`` strategy and
:data:`flower_chain.clients.secagg.secagg_mod` on the clients::

    workflow = DefaultWorkflow(fit_workflow=LedgerSecAggPlusWorkflow(num_shares=5, reconstruction_threshold=3))

What it changes (docs/secagg.md): every stage reply is signed and judged (a rejected reply counts as a
dropout, never an exception); the neighbour graph comes from a seed committed in the round header; the
live/dropped sets are committed in a signed block before the unmask stage, and clients check it; a node
dropping in stage 0 or 1 no longer halts the round; masks come from AES-256-CTR over the full seed unless
``mask_generator="flwr-randomstate-32"`` (Flower's, recorded as such). The server never holds a
plaintext update: the blob store gets masked vectors and the aggregate. The round's ledger writes (commit
block and proofs, the masked vectors' blob write, result block) are in :mod:`.secagg_record`.

The new global model is the protocol's weighted average (Flower's SecAgg+ arithmetic: weights
``num_examples / max_weight`` quantized), cast to the model's dtypes, exactly what the auditor re-derives;
the wrapped strategy's ``aggregate_fit`` is not applied (server-side optimizers such as FedAdam are not
supported under SecAgg+; FedAvg and FedProx are).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import parameters_to_ndarrays
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from flower_chain.ledger import proofs
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.secagg import (
    COMMIT,
    HEADER,
    MASKED,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    VERSION_FIELD,
    SecAggEntry,
    header_digest,
    overflow_problem,
    server_record,
)
from flower_chain.ledger.secagg_masks import (
    AES256_CTR_V1,
    GENERATORS,
    finish_aggregate,
    neighbour_graph,
)
from flower_chain.strategies.secagg_judge import RECORD, StageJudge, Verdict
from flower_chain.strategies.secagg_record import Background, RoundRecording
from flower_chain.strategies.secagg_unmask import one_sided_pairs, one_sided_text, rebuild_all, unmask
from flower_chain.wire import CTX_BASE, CTX_PARENT, PREFIX

log = logging.getLogger(__name__)


#: The kind the stage verdicts are counted under in the core's verdict Counter (the end-of-run summary).
SECAGG_KIND = "secagg"

#: Wrapped strategies whose aggregation is the weighted average SecAgg+ computes (client-side differences only).
_AVERAGING = ("FedAvg", "FedProx")


class LedgerSecAggPlusWorkflow:
    """SecAgg+ whose transcript is on the ledger (parameters as ``SecAggPlusWorkflow``'s, plus the generator).

    Parameters
    ----------
    num_shares, reconstruction_threshold : int or float
        As Flower's: shares per secret (a float: a fraction of the sampled nodes) and shares needed.
    max_weight, clipping_range, quantization_range, modulus_range, timeout
        As Flower's ``SecAggPlusWorkflow``.
    mask_generator : str
        ``"aes256-ctr-v1"`` (default) or ``"flwr-randomstate-32"`` (Flower's; ``audit`` warns).
    """

    def __init__(
        self,
        num_shares: float,
        reconstruction_threshold: float,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        quantization_range: int = 4194304,
        modulus_range: int = 4294967296,
        timeout: float | None = None,
        mask_generator: str = AES256_CTR_V1,
    ) -> None:
        if mask_generator not in GENERATORS:
            raise ValueError(f"mask_generator must be one of {GENERATORS}, not {mask_generator!r}")
        if modulus_range > 2**32 or modulus_range & (modulus_range - 1) or modulus_range <= quantization_range:
            raise ValueError("modulus_range must be a power of two up to 2**32 above quantization_range")
        if max_weight <= 0 or clipping_range <= 0 or quantization_range <= 0:
            raise ValueError("max_weight, clipping_range and quantization_range must be positive")
        self.num_shares, self.reconstruction_threshold = num_shares, reconstruction_threshold
        self.max_weight, self.clipping_range = float(max_weight), float(clipping_range)
        self.quantization_range, self.modulus_range = int(quantization_range), int(modulus_range)
        self.timeout, self.mask_generator = timeout, mask_generator
        self.sent_sizes: dict[str, set[int]] = {}  # node -> checkpoint sizes it was sent (consistency proofs)
        self.last_round: dict[str, Any] = {}  # figures of the last round (tests, bench)

    def _shares(self, n: int) -> tuple[int, int]:
        """(num_shares, threshold) for ``n`` sampled nodes, as Flower computes them."""
        shares = self.num_shares
        if isinstance(shares, float):
            shares = round(shares * n)
            if shares < n and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = n
        t = self.reconstruction_threshold
        t = max(round(t * shares), 2) if isinstance(t, float) else int(t)
        return int(shares), int(t)

    def __call__(self, grid, context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        core = getattr(context.strategy, "core", None)
        if core is None:
            raise TypeError("LedgerSecAggPlusWorkflow needs a LegacyLedgerStrategy as the ServerApp strategy")
        inner = type(getattr(context.strategy, "strategy", None)).__name__
        if inner not in _AVERAGING and not getattr(self, "_warned", False):
            self._warned = True
            log.warning(
                "under SecAgg+ the new model is the protocol's weighted average (FedAvg): %s's own "
                "aggregate_fit is not applied",
                inner,
            )
        t0 = time.perf_counter()
        rnd = _Round(self, grid, context, core)
        if rnd.setup():
            rnd.run()
        self.last_round = {**rnd.figures, "seconds": time.perf_counter() - t0}


class _Round(RoundRecording):
    """One SecAgg+ round: four stages, two blocks."""

    def __init__(self, wf: LedgerSecAggPlusWorkflow, grid, context, core) -> None:
        self.wf, self.grid, self.context, self.core = wf, grid, context, core
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        self.round = int(cast(int, cfg[WorkflowKey.CURRENT_ROUND]))
        self.entries: list[SecAggEntry] = []
        self.verdicts: dict[str, dict[str, Verdict]] = {s: {} for s in (SETUP, SHARE_KEYS, MASKED, UNMASK)}
        self.figures: dict[str, Any] = {"round": self.round}

    # -- messaging ----------------------------------------------------------------------------------
    def _exchange(
        self,
        stage: str,
        requests: dict[str, tuple[dict[str, Any], dict[str, Any], RecordDict | None]],
        expect: dict[str, dict[str, Any]],
    ) -> set[str]:
        """Send each node its request, judge the replies; return the nodes whose reply was accepted.

        Every verdict (duplicates included) is counted in the core's ``(kind, reason)`` Counter under kind
        ``"secagg"``, so the end-of-run summary reports the SecAgg+ stage replies this server judged.
        """
        first, msgs = len(self.entries), []
        for nid, (content, proof, base) in requests.items():
            body = RecordDict(dict(base.items())) if base is not None else RecordDict()
            body.config_records[RECORD] = ConfigRecord(
                {"request": encode({"stage": stage, "round_id": self.round_id, "content": content, "proof": proof})}
            )
            msgs.append(
                Message(content=body, dst_node_id=int(nid), message_type=MessageType.TRAIN, group_id=str(self.round))
            )
        try:
            replies = list(self.grid.send_and_receive(msgs, timeout=self.wf.timeout)) if msgs else []
        except Exception as e:  # noqa: BLE001 - the transport failing is every node dropping, not a crash
            log.error("round %d stage %s: sending failed (%s)", self.round, stage, e)
            replies = []
        got: dict[str, Verdict] = {}
        for reply in replies:
            nid = str(getattr(reply.metadata, "src_node_id", ""))
            if nid not in requests:
                continue  # not asked: nothing to judge it against
            if reply.has_error():
                v = self.judge.missing(stage, nid, "client-error", str(getattr(reply.error, "reason", "")))
            else:
                rec = reply.content.config_records.get(RECORD)
                v = self.judge.judge(stage, nid, rec, requests[nid][0], expect.get(nid, {}))
            if nid in got and got[nid].accepted:
                v = self.judge.missing(stage, nid, "duplicate", "a second reply to this stage")
                self.entries.append(v.entry)
                continue
            got[nid] = v
        for nid in requests:
            v = got.get(nid) or self.judge.missing(stage, nid)
            self.verdicts[stage][nid] = v
            self.entries.append(v.entry)
        self.core.verdicts.update((SECAGG_KIND, e.reason) for e in self.entries[first:])
        return {nid for nid, v in self.verdicts[stage].items() if v.accepted}

    # -- stage 0 ------------------------------------------------------------------------------------
    def setup(self) -> bool:
        ctx = self.context
        parameters = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        pairs = ctx.strategy.configure_fit(self.round, parameters, ctx.client_manager)
        if not pairs:
            log.info("configure_fit: no clients selected, cancel")
            return False
        config = dict(pairs[0][1].config)
        self.fitins = {}
        for proxy, ins in pairs:
            plain = {k: v for k, v in ins.config.items() if not str(k).startswith(PREFIX)}
            ins.config = plain
            self.fitins[str(proxy.node_id)] = compat.fitins_to_recorddict(ins, True)
        self.model = parameters_to_ndarrays(parameters)
        sampled = sorted(self.fitins, key=int)
        if len(sampled) < 2:
            log.error("SecAgg+ needs at least 2 sampled nodes, got %d: the round is skipped", len(sampled))
            return False
        shares, t = self.wf._shares(len(sampled))
        overflow = overflow_problem(
            {"quantization_range": self.wf.quantization_range, "mod_range": self.wf.modulus_range}, len(sampled)
        )
        if overflow:  # docs/secagg.md §4: the nodes would refuse this header, the auditor would fail it
            log.error("SecAgg+ round %d is skipped: %s", self.round, overflow)
            return False
        self.header = {
            "federation_id": self.core.federation_id,
            "round": self.round,
            "parent": bytes(config.get(CTX_PARENT, b"")),
            "base_digest": bytes(config.get(CTX_BASE, b"")),
            "params": {
                "num_shares": shares,
                "threshold": t,
                "clipping_range": self.wf.clipping_range,
                "quantization_range": self.wf.quantization_range,
                "mod_range": self.wf.modulus_range,
                "max_weight": self.wf.max_weight,
            },
            "sampled": sampled,
            "graph_seed": os.urandom(32),
            "generator": self.wf.mask_generator,
            "nonce": os.urandom(16),
            VERSION_FIELD: self.core.recorder.digest_version,  # the genesis': every digest of the round uses it
        }
        self.round_id = header_digest(self.header)
        self.t = t
        self.graph = neighbour_graph(sampled, shares, self.header["graph_seed"])
        self.judge = StageJudge(
            self.core.federation_id,
            self.round,
            self.round_id,
            self.core.keys,
            self.core.revoked,
            base_digest=self.header["base_digest"],
            digest_version=self.header[VERSION_FIELD],
        )
        self.entries.append(server_record(self.round, HEADER, self.header))
        head = self.core.writer.head
        self.head_size = head.header.log_size
        requests = {nid: ({"header": self.header}, self._proof0(nid, head), None) for nid in sampled}
        self.a0 = self._exchange(SETUP, requests, {})
        self.pks = {n: self.verdicts[SETUP][n].statement.reply for n in self.a0}
        self.figures.update(sampled=len(sampled), setup=len(self.a0))
        return True

    def _proof0(self, nid: str, head: StoredBlock) -> dict[str, Any]:
        cons: dict[str, bytes] = {}
        for size in sorted(self.wf.sent_sizes.get(nid, ())):
            try:
                cons[str(size)] = b"".join(proofs.consistency_proof(self.core.ledger, size, head.header.log_size))
            except Exception:  # noqa: BLE001, S112 - a size this ledger never had: the node will say so
                continue
        self.wf.sent_sizes[nid] = {head.header.log_size}
        return {
            **self._signed(head),
            "server_key": raw_public(self.core.writer.server_key),
            "consistency": cons,
        }

    # -- stages 1-3 ---------------------------------------------------------------------------------
    def run(self) -> None:
        a1 = self._exchange(
            SHARE_KEYS,
            {
                n: (
                    {"keys": {m: [self.pks[m]["pk1"], self.pks[m]["pk2"]] for m in self.graph[n] if m in self.a0}},
                    {},
                    None,
                )
                for n in sorted(self.a0, key=int)
            },
            {n: {"to": [m for m in self.graph[n] if m in self.a0 and m != n]} for n in self.a0},
        )
        fwd: dict[str, dict[str, bytes]] = {n: {} for n in a1}
        for src in a1:
            for dst, ct in self.verdicts[SHARE_KEYS][src].payload["ciphertexts"].items():
                if dst in fwd:
                    fwd[dst][src] = ct
        shapes = [(1,)] + [tuple(a.shape) for a in self.model]
        a2 = self._exchange(
            MASKED,
            {
                n: ({"ciphertexts": fwd[n], "shares": self._commitments(n, fwd[n])}, {}, self.fitins[n])
                for n in sorted(a1, key=int)
            },
            {n: {"shapes": shapes, "mod_range": self.wf.modulus_range, "sources": sorted(fwd[n])} for n in a1},
        )
        live, dropped = sorted(a2, key=int), sorted(a1 - a2, key=int)
        self.figures.update(share_keys=len(a1), masked=len(a2), dropped=len(dropped))
        masked = {n: self.verdicts[MASKED][n].statement.reply["digest"] for n in live}
        signed = {
            n: [self.verdicts[MASKED][n].entry.statement, self.verdicts[MASKED][n].entry.signature] for n in live
        }  # each node checks its neighbours' signed sources before revealing their seeds
        commit = server_record(
            self.round,
            COMMIT,
            {"round_id": self.round_id, "live": live, "dropped": dropped, "masked": masked, "statements": signed},
        )
        index, size, proof = self._commit_block(commit)
        for n in live:
            self.wf.sent_sizes.setdefault(n, set()).add(size)
        requests = {
            n: (
                {
                    "active": [m for m in self.graph[n] if m in a2],
                    "dead": [m for m in self.graph[n] if m in dropped],
                    "commit_index": index,
                    "log_size": size,
                },
                proof,
                None,
            )
            for n in live
        }
        # the masked vectors go to the blob store while the nodes answer stage 3 and the server unmasks; the
        # result block waits for them (secagg_record), so they are durable before it names their aggregate
        store = self._store_masked(live, masked)
        try:
            self._exchange(UNMASK, requests, {})
            self._finish(live, dropped, store)
        finally:
            store.join()

    def _commitments(self, holder: str, sources: dict[str, bytes]) -> dict[str, list[bytes]]:
        """What each source committed, at share-keys, for the shares it sent ``holder`` (checked by the holder)."""
        return {s: self.verdicts[SHARE_KEYS][s].statement.reply["shares"].get(holder, []) for s in sources}

    def _finish(self, live: list[str], dropped: list[str], store: Background) -> None:
        t0, named = time.perf_counter(), None
        replies = {n: v.statement.reply for n, v in self.verdicts[UNMASK].items() if v.accepted}
        seeds, keys, wrong, failure = rebuild_all(
            replies,
            live,
            dropped,
            self.t,
            {n: self.verdicts[MASKED][n].statement.reply["seed_digest"] for n in live},
            {n: self.pks[n]["pk1"] for n in self.pks},
            {n: self.verdicts[SHARE_KEYS][n].statement.reply["shares"] for n in live + dropped},  # share digests
        )
        for owner, nodes in wrong.items():
            log.warning(
                "round %d: nodes %s revealed shares of node %s that do not fit its commitment", self.round, nodes, owner
            )
        agg_digest, total = b"", None
        if not live:
            failure = failure or "no masked input"
        pairs = one_sided_pairs({n: self.verdicts[MASKED][n].statement.reply["sources"] for n in live})
        if pairs:
            failure = failure or one_sided_text(*pairs[0])
        if not failure:
            total = unmask(
                {n: self.verdicts[MASKED][n].payload["arrays"] for n in live},
                seeds,
                keys,
                {n: self.pks[n]["pk1"] for n in self.pks},
                {n: self.verdicts[MASKED][n].statement.reply["sources"] for n in live},
                self.wf.modulus_range,
                self.wf.mask_generator,
            )
            failure = total if isinstance(total, str) else ""
        if not failure:
            agg_digest = self.core.recorder.digest([(str(i), a) for i, a in enumerate(total)])
            try:
                avg = finish_aggregate(total, self.wf.clipping_range, self.wf.quantization_range, len(live))
                named = self.core.cast_aggregate(self.round, [(str(i), a) for i, a in enumerate(avg)])
            except ValueError as e:
                failure = str(e)
        self.figures["unmask_seconds"] = time.perf_counter() - t0  # rebuild secrets, unmask, dequantize
        self._commit_result(live, named, agg_digest, failure, store)
