"""``audit_secagg``: check every SecAgg+ round of a ledger from its transcript alone (docs/secagg.md §6).

For each round: the protocol (every accepted statement signed by a genesis key and bound to its round,
header, stage, node and request; participation only shrinks from stage to stage; the commitment names
exactly the nodes with a signed masked input live and the others that shared keys dropped; every node
was told the committed lists; no node had both its secrets revealed; every unmask reply verified the
commit block's own checkpoint), then the replay: rebuild the seeds and keys from the revealed shares,
regenerate the masks, sum the stored masked vectors, dequantize, and compare the aggregate and
``model_after`` bit for bit. Nothing raises: whatever fails is a :class:`Finding`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flower_chain.audit.secagg_closure import (
    FORWARDED,
    closure_findings,
    duplicate_key_findings,
    masked_request,
)
from flower_chain.audit.secagg_result import check_result, masked_vector
from flower_chain.audit.secagg_transcript import Finding, RoundTranscript, content_problem, read_rounds
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.secagg import (
    MASKED,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    header_digest_version,
    overflow_problem,
    request_digest,
)
from flower_chain.ledger.secagg_masks import (
    WEAK_GENERATORS,
    neighbour_graph,
)
from flower_chain.ledger.writer import read_genesis
from flower_chain.strategies.secagg_unmask import one_sided_pairs, one_sided_text, rebuild_all, unmask

__all__ = ["Finding", "SecAggReport", "audit_secagg"]
_ORDER = (SETUP, SHARE_KEYS, MASKED, UNMASK)


@dataclass
class SecAggReport:
    """What :func:`audit_secagg` found and proved."""

    rounds: int = 0
    findings: list[Finding] = field(default_factory=list)
    proved: list[str] = field(default_factory=list)
    replay_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No error finding (warnings allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    def lines(self) -> list[str]:
        """The report as text lines: one per proved round, then one per finding."""
        head = f"SecAgg+: {self.rounds} round(s) audited from the transcript alone, " + (
            "all checks passed" if self.ok else f"{sum(f.severity == 'error' for f in self.findings)} error(s)"
        )
        return [head] + [f"  {p}" for p in self.proved] + [f"  {f}" for f in self.findings]


def audit_secagg(ledger: Ledger) -> SecAggReport:
    """Audit every SecAgg+ round of ``ledger`` (an open backend); never raises on ledger content."""
    report = SecAggReport()
    try:
        genesis = read_genesis(ledger)
    except LedgerError as e:
        report.findings.append(Finding(0, "genesis", "", str(e)))
        return report
    rounds = read_rounds(ledger, report.findings)
    report.rounds = len(rounds)
    for r in sorted(rounds):
        t0 = time.perf_counter()
        found: list[Finding] = []
        try:
            summary = _audit_round(rounds[r], genesis, ledger, found)
        except Exception as e:  # noqa: BLE001 - last resort: hostile content is a finding, never a traceback
            summary = ""
            found.append(Finding(r, "audit", "", f"unreadable round: {type(e).__name__}"))
        report.replay_seconds += time.perf_counter() - t0
        report.findings.extend(found)
        if summary and not any(f.severity == "error" for f in found):
            report.proved.append(summary)
    return report


def _audit_round(t: RoundTranscript, genesis, ledger: Ledger, found: list[Finding]) -> str:
    r = t.round
    if t.header is None:
        found.append(Finding(r, "header", "", "the round has no header: nothing of it can be checked"))
        return ""
    if t.header["federation_id"] != genesis.federation_id or t.header["round"] != r:
        found.append(Finding(r, "header", "", "the header names another federation or round"))
    if t.header["generator"] in WEAK_GENERATORS:
        found.append(
            Finding(
                r,
                "header",
                "",
                f"mask generator {t.header['generator']} folds seeds to 32 bits "
                "(Flower issue #7522): masks can be brute-forced",
                "warning",
            )
        )
    overflow = overflow_problem(t.header["params"], len(t.header["sampled"]))
    if overflow:
        found.append(Finding(r, "header", "", overflow))
    t.digest_version = genesis.digest_version  # the ledger's: every digest the replay compares uses it (§6.1)
    if header_digest_version(t.header) != genesis.digest_version:
        what = f"array digest version {header_digest_version(t.header)}, the ledger's is {genesis.digest_version}"
        found.append(Finding(r, "header", "", f"the header names {what}: its nodes digested under another"))
    if t.plain_updates:
        found.append(Finding(r, "header", "", f"{t.plain_updates} plain train updates in a SecAgg+ round"))
    graph = neighbour_graph(t.header["sampled"], t.header["params"]["num_shares"], t.header["graph_seed"])
    acc = _check_statements(t, genesis, graph, found)
    if t.commit is None:
        found.append(Finding(r, "commit", "", "no live/dropped commitment: the unmask stage is missing"))
        return ""
    live, dropped = _check_commit(t, acc, found)
    if t.commit_block is not None and t.header["base_digest"] != t.commit_block.header.model_before:
        found.append(Finding(r, "header", "", "the header's base_digest is not the commit block's model_before"))
    _check_unmask(t, genesis, graph, found)
    if t.result is None:
        found.append(Finding(r, "result", "", "no result record: the round's outcome is missing"))
        return ""
    if t.result["failure"]:
        before = t.result_block.header.model_before
        if t.result_block.header.model_after != before:
            found.append(Finding(r, "result", "", "a failed round changes the model"))
        found.append(Finding(r, "result", "", f"the round failed: {t.result['failure']}; the model stays", "warning"))
        return ""
    if _replay(t, acc, live, dropped, ledger, found):
        stage0 = len(t.header["sampled"]) - len(acc[SETUP])
        stage1 = len(acc[SETUP]) - len(acc[SHARE_KEYS])
        return (
            f"round {r}: aggregate = sum of {len(live)} signed masked inputs ({len(dropped)} dropped in stage "
            f"2, {stage1} in stage 1, {stage0} in stage 0); model_after re-derived bit for bit; "
            "no individual update was revealed (no node had both secrets revealed, every input carried a "
            "live pairwise mask)"
        )
    return ""


def _check_statements(t: RoundTranscript, genesis, graph: dict, found: list[Finding]) -> dict:
    """Re-check every accepted record; return the accepted records by stage and node."""
    r, keys, sampled = t.round, genesis.client_keys, set(t.header["sampled"])
    acc = {s: t.accepted(s) for s in _ORDER}
    node_key: dict[str, str] = {}
    for s in _ORDER:
        seen: set[str] = set()
        for rec in t.records[s]:
            e, st = rec.entry, rec.statement
            if e.verdict != "accepted":
                continue
            nid = e.node_id
            if nid in seen:
                found.append(Finding(r, s, nid, "two accepted records for one node"))
            seen.add(nid)
            problem = _statement_problem(t, genesis, keys, s, nid, e, st)
            if problem is not None and acc[s].get(nid) is rec:
                del acc[s][nid]  # never read as this stage's statement (it may carry another stage's reply)
            if problem is None and nid not in sampled:
                problem = "the node was not sampled"
            if problem is None and node_key.setdefault(nid, st.key_id) != st.key_id:
                problem = "signed by another key than the node set up with"
            if problem is None and s != SETUP and nid not in acc[_ORDER[_ORDER.index(s) - 1]]:
                problem = f"accepted without an accepted {_ORDER[_ORDER.index(s) - 1]} record"
            if problem is None:
                problem = _request_problem(t, acc, graph, s, nid, st) or content_problem(t, s, nid, st.reply)
            if problem:
                found.append(Finding(r, s, nid, problem))
    duplicate_key_findings(r, acc, found)
    return acc


def _statement_problem(t, genesis, keys, s, nid, e, st) -> str | None:
    if st is None:
        return "accepted without a decodable signed statement"
    raw = keys.get(st.key_id)
    if raw is None or st.key_id != e.key_id:
        return "the statement's key is not the recorded genesis key"
    if st.key_id in t.revoked:
        return "signed by a revoked key"
    if not verify_signature(raw, e.signature, e.statement):
        return "the signature does not verify"
    if (st.federation_id, st.round, st.round_id, st.stage, st.node_id) != (
        genesis.federation_id,
        t.round,
        t.round_id,
        s,
        nid,
    ):
        return "the statement is bound to another federation, round, header, stage or node (a replay)"
    return None


def _request_problem(t: RoundTranscript, acc: dict, graph: dict, s: str, nid: str, st) -> str | None:
    """Recompute what the node was asked where the ledger determines it; compare with what it signed."""
    if s == SETUP:
        content = {"header": t.header}
    elif s == SHARE_KEYS:
        pks = {m: acc[SETUP][m].statement.reply for m in graph.get(nid, []) if m in acc[SETUP]}
        content = {"keys": {m: [k["pk1"], k["pk2"]] for m, k in pks.items()}}
    elif s == UNMASK and t.commit is not None and t.commit_block is not None:
        content = _unmask_request(t, graph, nid)
    elif s == MASKED:
        return FORWARDED if masked_request(acc, nid) != st.request else None
    else:
        return None
    if request_digest(s, content) != st.request:
        return "the node signed a reply to another request than the ledger determines (told something else)"
    return None


def _unmask_request(t: RoundTranscript, graph: dict, nid: str) -> dict:
    live, dropped = set(t.commit["live"]), set(t.commit["dropped"])
    return {
        "active": [m for m in graph.get(nid, []) if m in live],
        "dead": [m for m in graph.get(nid, []) if m in dropped],
        "commit_index": t.commit_index,
        "log_size": t.commit_block.header.log_size,
    }


def _check_commit(t: RoundTranscript, acc: dict, found: list[Finding]) -> tuple[list[str], list[str]]:
    r, c = t.round, t.commit
    if c["round_id"] != t.round_id:
        found.append(Finding(r, "commit", "", "the commitment names another round header"))
    live, dropped = c["live"], c["dropped"]
    for nid, rec in acc[MASKED].items():
        if nid not in live:
            found.append(
                Finding(
                    r,
                    MASKED,
                    nid,
                    "a node with a signed masked input is not committed live"
                    + (" (declared dropped)" if nid in dropped else ""),
                )
            )
        elif c["masked"][nid] != rec.statement.reply["digest"] or c["statements"][nid] != [
            rec.entry.statement,
            rec.entry.signature,
        ]:
            found.append(Finding(r, MASKED, nid, "the committed masked input is not the one the node signed"))
    for nid in live:
        if nid not in acc[MASKED]:
            found.append(Finding(r, MASKED, nid, "a live masked input without the node's signed statement"))
        elif not set(acc[MASKED][nid].statement.reply["sources"]) & (set(live) - {nid}):
            found.append(
                Finding(
                    r,
                    MASKED,
                    nid,
                    "no live node shares a pairwise mask with this node: its mask "
                    "seed and its masked input on the ledger expose its input",
                )
            )
    for u, w in one_sided_pairs({n: acc[MASKED][n].statement.reply["sources"] for n in live if n in acc[MASKED]}):
        sev = "warning" if t.result is not None and t.result["failure"] else "error"  # failed closed: no blame
        for nid, what in ((u, f"masked with node {w}, which left it out"), (w, f"left node {u} out")):
            found.append(Finding(r, MASKED, nid, f"{what}: {one_sided_text(u, w)}", sev))
    closure_findings(r, acc, list(live), list(dropped), found)
    for nid in dropped:
        if nid not in acc[SHARE_KEYS]:
            found.append(Finding(r, "commit", nid, "declared dropped without having shared keys"))
    for nid in acc[SHARE_KEYS]:
        if nid not in live and nid not in dropped:
            found.append(Finding(r, "commit", nid, "shared keys but is neither live nor dropped"))
    return list(live), list(dropped)


def _check_unmask(t: RoundTranscript, genesis, graph: dict, found: list[Finding]) -> None:
    """Every signed unmask statement of this round (accepted or not: a refusal is evidence too)."""
    r, live, dropped = t.round, set(t.commit["live"]), set(t.commit["dropped"])
    cp = (t.commit_block.header.log_size, t.commit_block.header.log_root)
    seed_of: dict[str, list[str]] = {}
    key_of: dict[str, list[str]] = {}
    for rec in t.records[UNMASK]:
        st = rec.statement
        if (
            st is None
            or _statement_problem(t, genesis, genesis.client_keys, UNMASK, rec.entry.node_id, rec.entry, st) is not None
        ):
            continue  # not this node's signed reply to this round: the server rejected it, rightly
        nid, reply = rec.entry.node_id, st.reply
        seen = (reply["checkpoint_size"], reply["checkpoint_root"])
        if seen != cp and reply["checkpoint_size"] >= 0:
            how = "a second commit for the round" if seen in t.later_commits else "a fork of the log"
            found.append(
                Finding(
                    r,
                    UNMASK,
                    nid,
                    f"verified a checkpoint of size {reply['checkpoint_size']} that is not the first commit block's: {how}",
                )
            )
        expect = _unmask_request(t, graph, nid)
        if sorted(reply["active"]) != sorted(expect["active"]) or sorted(reply["dead"]) != sorted(expect["dead"]):
            found.append(Finding(r, UNMASK, nid, "was told live/dropped lists that differ from the commitment"))
        if reply["refused"]:
            found.append(Finding(r, UNMASK, nid, f"refused to reveal shares: {reply['refused']}"))
        for owner in reply["seed_shares"]:
            seed_of.setdefault(owner, []).append(nid)
            if owner in dropped:
                found.append(Finding(r, UNMASK, nid, f"revealed a mask-seed share of node {owner}, committed dropped"))
        for owner in reply["key_shares"]:
            key_of.setdefault(owner, []).append(nid)
            if owner in live:
                found.append(Finding(r, UNMASK, nid, f"revealed a key share of node {owner}, committed live"))
    for owner in sorted(set(seed_of) & set(key_of)):
        found.append(
            Finding(
                r,
                UNMASK,
                owner,
                "both secrets of this node were revealed (seed shares by "
                f"{sorted(seed_of[owner])}, key shares by {sorted(key_of[owner])}): "
                "its individual update is exposed",
            )
        )


def _replay(
    t: RoundTranscript, acc: dict, live: list[str], dropped: list[str], ledger: Ledger, found: list[Finding]
) -> bool:
    r, p = t.round, t.header["params"]
    replies = {n: rec.statement.reply for n, rec in t.accepted(UNMASK).items()}
    missing = [n for n in live if n not in acc[MASKED]] + [n for n in dropped if n not in acc[SETUP]]
    if missing:
        found.append(Finding(r, "result", "", f"nodes {missing} have no signed statements to replay against"))
        return False
    seeds, keys, wrong, problem = rebuild_all(
        replies,
        live,
        dropped,
        p["threshold"],
        {n: acc[MASKED][n].statement.reply["seed_digest"] for n in live},
        {n: rec.statement.reply["pk1"] for n, rec in acc[SETUP].items()},
        {n: acc[SHARE_KEYS][n].statement.reply["shares"] for n in [*live, *dropped] if n in acc[SHARE_KEYS]},
    )
    forwarded = {f.node for f in found if f.round == r and f.stage == MASKED and f.message == FORWARDED}
    for owner, nodes in sorted(wrong.items()):
        for nid in nodes:
            if nid in forwarded:  # it checked its share against what the server forwarded, not what was signed
                continue
            what = "rebuilt from the verified shares only" if owner in seeds or owner in keys else "not rebuilt"
            found.append(
                Finding(
                    r,
                    UNMASK,
                    nid,
                    f"revealed a share of node {owner} other than the one {owner} committed to "
                    f"for it at share-keys (the secret was {what})",
                    "warning",
                )
            )
    if problem:
        found.append(Finding(r, UNMASK, problem.split("'")[0].split()[-1], f"not rebuilt: {problem}"))
    vectors = {n: masked_vector(ledger, t.commit["masked"][n], found, r, n, t.digest_version) for n in live}
    if any(f.severity == "error" and f.round == r for f in found) or not live:
        found.append(Finding(r, "result", "", "the aggregate cannot be replayed (see above)"))
        return False
    shapes = {tuple(np.asarray(a).shape for a in v) for v in vectors.values()}
    if len(shapes) != 1:
        found.append(Finding(r, MASKED, "", "the masked vectors do not all have one layout"))
        return False
    total = unmask(
        vectors,
        seeds,
        keys,
        {n: rec.statement.reply["pk1"] for n, rec in acc[SETUP].items()},
        {n: acc[MASKED][n].statement.reply["sources"] for n in live},
        p["mod_range"],
        t.header["generator"],
    )
    if isinstance(total, str):
        found.append(Finding(r, "result", "", total))
        return False
    return check_result(t, total, len(live), found, ledger)
