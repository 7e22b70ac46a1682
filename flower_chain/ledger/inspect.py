"""Read-side views of a ledger: per-block rows, entries of a round, flat exports.

Nothing here checks cryptography (that is :mod:`flower_chain.ledger.verify`);
these functions decode what is stored so people and scripts can look at it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.entries import Entry, EvaluationEntry, UpdateEntry, decode_entry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.secagg import CLIENT_STAGES, SecAggEntry
from flower_chain.ledger.writer import read_genesis


@dataclass
class BlockRow:
    """One block, summarised.

    ``accepted``/``rejected``/``reasons`` count replies to train instructions, ``evaluate_accepted``/
    ``evaluate_rejected``/``evaluate_reasons`` replies to evaluate instructions (``evaluate_replies`` is
    their sum). ``secagg`` counts the SecAgg+ node records by stage and reason (``"ok"``: accepted).
    """

    height: int
    round: int
    entries: int
    accepted: int
    rejected: int
    reasons: Counter[str]
    model_after: str
    time: str
    timestamp_ms: int
    log_size: int
    hash: str
    evaluate_replies: int = 0
    evaluate_accepted: int = 0
    evaluate_rejected: int = 0
    evaluate_reasons: Counter[str] = field(default_factory=Counter)
    equivocating: set[str] = field(default_factory=set)  # keys that signed two different statements for the round
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    clients: list[tuple[str, str, str]] = field(default_factory=list)  # (key id, verdict, reason)
    secagg: dict[str, Counter[str]] = field(default_factory=dict)  # stage -> reason -> node records

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["reasons"] = dict(self.reasons)
        d["evaluate_reasons"] = dict(self.evaluate_reasons)
        d["clients"] = [list(c) for c in self.clients]
        d["equivocating"] = sorted(self.equivocating)
        d["secagg"] = {stage: dict(c) for stage, c in self.secagg.items()}
        return d


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def entries_of(ledger: Ledger, header: BlockHeader) -> Iterator[Entry]:
    for data in ledger.entries(header.first_index, header.log_size):
        yield decode_entry(data)


def block_rows(ledger: Ledger, start: int = 0, end: int | None = None) -> Iterator[BlockRow]:
    """One :class:`BlockRow` per block with ``start <= height < end``."""
    for block in ledger.blocks(start, end):
        h = block.header
        row = BlockRow(
            h.height,
            h.round,
            h.entry_count,
            0,
            0,
            Counter(),
            h.model_after.hex(),
            _time(h.timestamp_ms),
            h.timestamp_ms,
            h.log_size,
            block.hash.hex(),
        )
        for e in entries_of(ledger, h):
            if isinstance(e, UpdateEntry) and e.reason == "equivocation" and e.key_id:
                row.equivocating.add(e.key_id)
            if isinstance(e, UpdateEntry) and e.kind == "evaluate":
                row.evaluate_replies += 1
                if e.verdict == "accepted":
                    row.evaluate_accepted += 1
                else:
                    row.evaluate_rejected += 1
                    row.evaluate_reasons[e.reason] += 1
            elif isinstance(e, UpdateEntry):
                if e.verdict == "accepted":
                    row.accepted += 1
                else:
                    row.rejected += 1
                    row.reasons[e.reason] += 1
                row.clients.append((e.key_id, e.verdict, e.reason))
            elif isinstance(e, EvaluationEntry):
                row.evaluations.append({"source": e.source, "num_replies": e.num_replies, **e.metrics})
            elif isinstance(e, SecAggEntry) and e.stage in CLIENT_STAGES:
                row.secagg.setdefault(e.stage, Counter())[e.reason] += 1
        yield row


def summary(ledger: Ledger) -> dict[str, Any]:
    """Federation, counts, head and checkpoint of a ledger.

    ``accepted``, ``rejected`` and ``reasons`` count replies to train instructions;
    ``evaluate_accepted``, ``evaluate_rejected`` and ``evaluate_reasons`` replies to evaluate
    instructions; ``equivocating_keys`` the keys that signed two different statements for one round;
    ``verdicts`` holds every verdict as ``{"train": {"ok": n, reason: n, ...},
    "evaluate": {...}}`` ("ok" counts the accepted ones); ``secagg`` the SecAgg+ node records as
    ``{stage: {"ok": n, reason: n, ...}}`` in protocol order (``{}`` for a ledger without SecAgg+ rounds).
    """
    genesis = read_genesis(ledger)
    head = ledger.head()
    if head is None:  # read_genesis raised for an empty ledger; a ledger emptied since is an error too
        raise LedgerError(f"{ledger.uri}: the ledger is empty (no genesis block)")
    accepted = rejected = ev_accepted = ev_rejected = 0
    reasons: Counter[str] = Counter()
    ev_reasons: Counter[str] = Counter()
    rounds: set[int] = set()
    equivocating: set[str] = set()
    secagg: dict[str, Counter[str]] = {}
    for row in block_rows(ledger, 1):
        equivocating |= row.equivocating
        for stage, counts in row.secagg.items():
            secagg.setdefault(stage, Counter()).update(counts)
        accepted += row.accepted
        rejected += row.rejected
        reasons.update(row.reasons)
        ev_accepted += row.evaluate_accepted
        ev_rejected += row.evaluate_rejected
        ev_reasons.update(row.evaluate_reasons)
        if row.accepted or row.rejected or row.secagg:
            rounds.add(row.round)
    verdicts = {
        kind: {**({"ok": ok} if ok else {}), **dict(sorted(why.items()))}
        for kind, ok, why in (("train", accepted, reasons), ("evaluate", ev_accepted, ev_reasons))
    }
    return {
        "uri": ledger.uri,
        "backend": ledger.backend,
        "federation_id": genesis.federation_id,
        "strategy": genesis.strategy,
        "settings_digest": genesis.config_digest.hex(),  # what a node pins (settings-digest) and signs
        "allowed_keys": len(genesis.client_keys),
        "rounds": len(rounds),
        "blocks": ledger.block_count(),
        "entries": head.header.log_size,
        "accepted": accepted,
        "rejected": rejected,
        "reasons": dict(reasons),
        "evaluate_accepted": ev_accepted,
        "evaluate_rejected": ev_rejected,
        "evaluate_reasons": dict(ev_reasons),
        "verdicts": verdicts,
        "secagg": {stage: _ok_first(secagg[stage]) for stage in CLIENT_STAGES if stage in secagg},
        "equivocating_keys": sorted(equivocating),
        "head_hash": head.hash.hex(),
        "model_digest": head.header.model_after.hex(),
        "checkpoint": head.checkpoint,
    }


def _ok_first(counts: Counter[str]) -> dict[str, int]:
    """``{"ok": n, reason: n, ...}``: the accepted first, then the reasons in order (as ``verdicts``)."""
    return {
        **({"ok": counts["ok"]} if counts.get("ok") else {}),
        **dict(sorted((r, n) for r, n in counts.items() if r != "ok")),
    }


def round_entries(ledger: Ledger, server_round: int) -> list[dict[str, Any]]:
    """Every entry recorded for a server round, as dicts."""
    out = []
    for block in ledger.blocks():
        h = block.header
        if h.round != server_round or h.height == 0:
            continue
        for i, e in enumerate(entries_of(ledger, h)):
            out.append(entry_dict(e, h.height, h.first_index + i))
    if not out:
        raise LedgerError(f"round {server_round} is not in the ledger")
    return out


def entry_dict(e: Entry, height: int, index: int) -> dict[str, Any]:
    d = {"block": height, "index": index, "type": e.TYPE}
    for k, v in e.to_dict().items():
        if k == "type":
            continue
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, dict):
            v = {kk: (vv.hex() if isinstance(vv, bytes) else vv) for kk, vv in v.items()}
        d[k] = v
    return d


def export_rows(ledger: Ledger) -> Iterator[dict[str, Any]]:
    """Every entry with its block's header fields: one flat row each (for CSV/JSON export)."""
    for block in ledger.blocks():
        h = block.header
        base = {
            "block_height": h.height,
            "block_round": h.round,
            "block_time": _time(h.timestamp_ms),
            "block_hash": block.hash.hex(),
            "prev_hash": h.prev_hash.hex(),
            "model_before": h.model_before.hex(),
            "model_after": h.model_after.hex(),
            "state_after": h.state_after.hex(),
            "log_size": h.log_size,
            "log_root": h.log_root.hex(),
        }
        for i, e in enumerate(entries_of(ledger, h)):
            yield {**base, **entry_dict(e, h.height, h.first_index + i)}
