"""The explorer page's numbers, read from a ledger's blocks: rounds, verdicts, metrics, clients, per-key history.

Everything is computed from blocks ``0..last_height`` (the head the log server currently serves).
Verdicts are counted for train *and* evaluate replies; metrics keep who computed them (``source``:
``federated`` — aggregated from the clients' signed replies — or ``centralized`` — the server's own
claim); clients are shown by the name their key was created with when the server was given a keyring
(``names``), replies without a key by the node they came from. Round 1's duration runs from the
genesis, so it includes start-up (``duration_includes_startup``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from flower_chain.audit.report import verdict_colour
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.entries import EvaluationEntry, RevocationEntry, UpdateEntry, decode_entry
from flower_chain.ledger.writer import read_genesis

KINDS = ("train", "evaluate")


def _json_value(v: int | float | str | bool) -> int | float | str | bool:
    """A metric as JSON can carry it: a NaN or an infinity (recorded from some reply) becomes its name."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


KEY, NODE = "key:", "node:"


def client_id(e: UpdateEntry) -> str:
    """The explorer's id of who sent a reply: ``key:<key id>``, or ``node:<node id>`` for a reply without a key.

    Two namespaces, so a hostile reply whose recorded key id looks like a node's cannot pass for it.
    """
    return KEY + e.key_id if e.key_id else NODE + e.node_id


def _new_round(rnd: int, ms: int) -> dict[str, Any]:
    return {
        "round": rnd,
        "accepted": 0,
        "rejected": 0,
        "reasons": Counter(),
        "evaluate_replies": 0,
        "evaluate_accepted": 0,
        "evaluate_rejected": 0,
        "evaluate_reasons": Counter(),
        "first_ms": ms,
        "last_ms": ms,
        "blocks": [],
    }


def _count(r: dict[str, Any], e: UpdateEntry) -> None:
    prefix = "evaluate_" if e.kind == "evaluate" else ""
    if e.kind == "evaluate":
        r["evaluate_replies"] += 1
    if e.verdict == "accepted":
        r[prefix + "accepted"] += 1
    else:
        r[prefix + "rejected"] += 1
        r[prefix + "reasons"][e.reason] += 1


def _history_row(e: UpdateEntry, index: int, height: int) -> dict[str, Any]:
    return {
        "index": index,
        "block": height,
        "round": e.round,
        "kind": e.kind,
        "verdict": e.verdict,
        "reason": e.reason,
        "num_examples": e.num_examples if e.num_examples >= 0 else None,
        "node_id": e.node_id,
        "metrics": {k: _json_value(v) for k, v in e.metrics.items() if isinstance(v, (int, float, str, bool))},
    }


def _walk(ledger: Ledger, last_height: int) -> dict[str, Any]:
    rounds: dict[int, dict[str, Any]] = {}
    reasons: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    keys: dict[str, list[dict[str, Any]]] = defaultdict(list)
    clients: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: {k: Counter() for k in KINDS})
    metrics: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    prev_ts = None
    for block in ledger.blocks(0, last_height + 1):
        h = block.header
        blocks.append(
            {
                "height": h.height,
                "round": h.round,
                "entries": h.entry_count,
                "log_size": h.log_size,
                "timestamp_ms": h.timestamp_ms,
                "seconds_since_previous": None if prev_ts is None else (h.timestamp_ms - prev_ts) / 1000,
            }
        )
        prev_ts = h.timestamp_ms
        if h.height == 0:
            continue
        for i, data in enumerate(ledger.entries(h.first_index, h.log_size)):
            e, index = decode_entry(data), h.first_index + i
            r = rounds.setdefault(h.round, _new_round(h.round, h.timestamp_ms))
            r["last_ms"] = max(r["last_ms"], h.timestamp_ms)
            if h.height not in r["blocks"]:
                r["blocks"].append(h.height)
            if isinstance(e, UpdateEntry) and e.kind in KINDS:
                _count(r, e)
                if e.verdict != "accepted":
                    reasons[e.kind][e.reason] += 1
                keys[client_id(e)].append(_history_row(e, index, h.height))
                clients[client_id(e)][e.kind]["accepted" if e.verdict == "accepted" else e.reason] += 1
            elif isinstance(e, EvaluationEntry):
                values = {
                    k: _json_value(v)
                    for k, v in e.metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "source")
                }
                metrics.append({"round": e.round, "source": e.source, "index": index, **values})
            elif isinstance(e, RevocationEntry):
                keys[KEY + e.key_id].append(
                    {
                        "index": index,
                        "block": h.height,
                        "round": h.round,
                        "kind": "revocation",
                        "verdict": "revoked",
                        "reason": e.reason,
                        "num_examples": None,
                    }
                )
    return {
        "rounds": rounds,
        "reasons": reasons,
        "keys": keys,
        "clients": clients,
        "metrics": metrics,
        "blocks": blocks,
    }


def _label(cid: str, names: dict[str, str]) -> str:
    if cid.startswith(NODE):
        return f"unsigned (node {cid[len(NODE) :]})"
    kid = cid[len(KEY) :]
    return names.get(kid, kid)


def explorer_data(ledger: Ledger, last_height: int, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Rounds, verdicts (train and evaluate), metrics, clients and per-key history from blocks ``0..last_height``.

    ``names`` maps key ids to the names the keys were created with (a keyring's ``NAME.pub``).
    """
    names = names or {}
    genesis = read_genesis(ledger)
    w = _walk(ledger, last_height)
    blocks = w["blocks"]
    prev_last = blocks[0]["timestamp_ms"] if blocks else None
    round_rows: list[dict[str, Any]] = []
    for rnd in sorted(w["rounds"]):
        r = w["rounds"][rnd]
        r["reasons"], r["evaluate_reasons"] = dict(r["reasons"]), dict(r["evaluate_reasons"])
        r["duration_s"] = None if prev_last is None else max(0.0, (r["last_ms"] - prev_last) / 1000)
        r["duration_includes_startup"] = not round_rows  # the first round runs from the genesis
        prev_last = r["last_ms"]
        round_rows.append(r)
    for kid in genesis.client_keys:  # allowed keys that never replied are clients too
        w["clients"].setdefault(KEY + kid, {k: Counter() for k in KINDS})
    clients = [
        {
            "id": cid,
            "name": _label(cid, names),
            "named": cid[len(KEY) :] in names and cid.startswith(KEY),
            "train": dict(c["train"]),
            "evaluate": dict(c["evaluate"]),
        }
        for cid, c in sorted(w["clients"].items(), key=lambda kv: (_label(kv[0], names), kv[0]))
    ]
    return {
        "federation_id": genesis.federation_id,
        "origin": f"flower-chain/{genesis.federation_id}",
        "strategy": genesis.strategy,
        "allowed_keys": len(genesis.client_keys),
        "blocks": len(blocks),
        "log_size": blocks[-1]["log_size"] if blocks else 0,
        "rounds": round_rows,
        "reasons": dict(w["reasons"]["train"]),
        "evaluate_reasons": dict(w["reasons"]["evaluate"]),
        "keys": {k: v for k, v in sorted(w["keys"].items())},
        "key_names": {k: _label(k, names) for k in sorted(w["keys"])},
        "clients": clients,
        "accuracy": w["metrics"],
        "block_times": blocks,
        "verdict_colours": {
            label: verdict_colour(label) for label in {"accepted", *w["reasons"]["train"], *w["reasons"]["evaluate"]}
        },
    }
