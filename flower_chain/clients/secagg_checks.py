"""What a SecAgg+ node checks before it answers: the round header, the checkpoints, the committed lists.

No flwr. Each check returns a problem (text) or ``None``; nothing here raises on hostile input.
docs/secagg.md §5 lists the rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from flower_chain.ledger import merkle
from flower_chain.ledger.arrays import DIGEST_VERSIONS
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, check_head, head_of, verify_checkpoint
from flower_chain.ledger.cosignature import CosignerKey, verify_cosigned_checkpoint
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.errors import EncodingError, LedgerError
from flower_chain.ledger.genesis import GenesisError, keyring_from_proof
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.secagg import (
    COMMIT,
    MASKED,
    SecAggEntry,
    StageStatement,
    check_commit,
    check_header,
    header_digest_version,
    overflow_problem,
)
from flower_chain.ledger.secagg_masks import neighbour_graph
from flower_chain.ledger.writer import origin_for
from flower_chain.wire import record_digest


def parse_request(raw: Any) -> dict[str, Any] | str:
    """The request map of a SecAgg+ instruction, or the problem with it."""
    if not isinstance(raw, bytes):
        return "the instruction carries no flower-chain SecAgg+ request"
    try:
        req = decode(raw)
    except EncodingError as e:
        return f"the request does not decode: {e}"
    want = {"stage": str, "round_id": bytes, "content": dict, "proof": dict}
    if (
        not isinstance(req, dict)
        or sorted(req) != sorted(want)
        or not all(isinstance(req[k], t) for k, t in want.items())
    ):
        return "the request does not have the fields stage, round_id, content, proof"
    return req


def header_problem(header: Any, node_id: str) -> str | None:
    """Why a round header cannot be taken part in, or ``None``."""
    try:
        check_header(header)
    except EncodingError as e:
        return str(e)
    if header_digest_version(header) not in DIGEST_VERSIONS:  # as wire.parse_context: never guessed
        return f"unknown array digest version {header_digest_version(header)} (known: {list(DIGEST_VERSIONS)})"
    p = header["params"]
    n = len(header["sampled"])
    if node_id not in header["sampled"]:
        return "this node is not among the round's sampled nodes"
    if not 2 <= p["threshold"] <= min(p["num_shares"], n):
        return f"threshold {p['threshold']} is not in [2, min(num_shares, sampled)]"
    width = len(neighbours_of(header, node_id))
    if 2 * p["threshold"] <= width:
        # the holders of this node's shares are its neighbourhood (itself included); each reveals one of the
        # two secrets, so two disjoint groups of ``threshold`` holders must not fit in it (docs/secagg.md §7)
        return f"threshold {p['threshold']} is not a strict majority of this node's {width} share holders"
    mod = p["mod_range"]
    if mod < 2 or mod > 2**32 or mod & (mod - 1) or not 0 < p["quantization_range"] < mod:
        return "mod_range must be a power of two up to 2**32 above quantization_range"
    overflow = overflow_problem(p, n)  # at most n live inputs: their sum must not wrap
    if overflow:
        return overflow
    if not p["clipping_range"] > 0 or not p["max_weight"] > 0:
        return "clipping_range and max_weight must be positive"
    return None


def weight_problem(num_examples: Any, header: dict[str, Any]) -> str | None:
    """Why this node's quantized weight ``q = round(num_examples / max_weight * quantization_range)`` (element 0
    of its input) could make the sum of the ``n`` sampled nodes' weights wrap modulo ``mod_range``
    (``n * q >= mod_range``), or ``None``. Its other elements are at most ``quantization_range`` (§4)."""
    p, n = header["params"], len(header["sampled"])
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        return f"num_examples {num_examples!r} is not a count"
    q = round(num_examples / p["max_weight"] * p["quantization_range"])
    if n * q >= p["mod_range"]:
        return (
            f"num_examples {num_examples} with max_weight {p['max_weight']} gives weight {q}: {n} such weights "
            f"reach mod_range {p['mod_range']}, the masked sum could wrap (raise max_weight)"
        )
    return None


def base_problem(record: Any, base_digest: bytes, version: int) -> str | None:
    """Why the model a masked-input instruction carries (its ``fitins.parameters`` ArrayRecord), digested
    under the header's array digest ``version`` (the ledger's), is not the round header's ``base_digest``, or
    ``None``: else the server could send each node another model (a model-inconsistency attack) while the
    header, the aggregate and the audit name one."""
    if record is None:
        return "the masked-input instruction carries no model (fitins.parameters)"
    try:
        digest = record_digest(record, version)
    except Exception as e:  # noqa: BLE001 - hostile arrays: a refusal, never a crash
        return f"the model sent does not digest: {type(e).__name__}"
    if digest != base_digest:
        return "the model sent is not the round header's base model (base_digest)"
    return None


def share_keys_problem(keys: Any, state: dict[str, Any]) -> str | None:
    """Why the public keys a share-keys request forwards cannot be taken (docs/secagg.md §5), or ``None``."""
    me = state["node_id"]
    if not isinstance(keys, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(b, bytes) for b in v) for v in keys.values()
    ):
        return "the share-keys request does not map node ids to two public keys"
    if not set(keys) <= set(neighbours_of(state["header"], me)):
        return "the server forwards keys of nodes that are not this node's neighbours"
    if keys.get(me) != [state["pk1"], state["pk2"]]:
        return "the server forwards other public keys for this node than it sent"
    flat = [b for v in keys.values() for b in v]
    if len(set(flat)) != len(flat):
        return "two forwarded public keys are identical"
    if len(keys) < state["header"]["params"]["threshold"]:
        return "fewer neighbours than the threshold"
    return None


def neighbours_of(header: dict[str, Any], node_id: str) -> list[str]:
    """This node's neighbours (itself included) by the header's committed graph seed."""
    graph = neighbour_graph(header["sampled"], header["params"]["num_shares"], header["graph_seed"])
    return graph.get(node_id, [])


class Verified(NamedTuple):
    """A checkpoint a node verified: its log size and root, and whether it named its head block (§5.1)."""

    size: int
    root: bytes
    named: bool


def checkpoint_problem(
    note: Any,
    server_key: bytes,
    federation_id: str,
    last: tuple[int, bytes] | None,
    consistency: Any,
    witnesses: Sequence[CosignerKey] = (),
    quorum: int = 0,
    *,
    proof: Any = None,
    head_required: bool = False,
) -> tuple[Verified | None, str | None]:
    """Verify a checkpoint note (cosigned by ``quorum`` of ``witnesses`` when asked), its head line against
    the signed block header ``proof`` carries (:func:`head_problem`) and its consistency with the last one
    this node verified.

    Returns (Verified, None) or (None, problem).
    """
    if not isinstance(note, str):
        return None, "no checkpoint"
    try:
        if quorum:
            cp, _ = verify_cosigned_checkpoint(note, server_key, witnesses, quorum, origin=origin_for(federation_id))
        else:
            cp = verify_checkpoint(note, server_key, origin_for(federation_id))
    except (LedgerError, ValueError) as e:
        return None, f"the checkpoint does not verify: {e}"
    named, problem = head_problem(
        cp, proof if isinstance(proof, dict) else {}, server_key, federation_id, head_required
    )
    if problem:
        return None, problem
    if last is not None:
        problem = _consistent(last, (cp.size, cp.root_hash), consistency)
        if problem:
            return None, problem
    return Verified(cp.size, cp.root_hash, named), None


def head_problem(
    cp: Checkpoint, proof: dict[str, Any], server_key: bytes, fid: str, required: bool
) -> tuple[bool, str | None]:
    """Check the checkpoint's ``flower-chain/head`` line (docs/ledger-format.md §5.1) against the signed block
    header the request carries (``proof["head"]``, ``proof["head_signature"]``): the head of that log, of this
    federation, the block the line names. ``required``: a checkpoint this node verified before named its head
    (then every later one must). Returns (whether the checkpoint names its head, problem or ``None``)."""
    try:
        named = head_of(cp)
    except LedgerError as e:
        return False, f"the checkpoint's head line is malformed: {e}"
    if named is None and not required:
        return False, None  # a log written before head lines: nothing to bind
    head, sig = proof.get("head"), proof.get("head_signature")
    if not isinstance(head, bytes) or not isinstance(sig, bytes) or not verify_signature(server_key, sig, head):
        return False, "the request carries no block header signed by the server key for the checkpoint's head"
    try:
        header = BlockHeader.from_bytes(head)
    except LedgerError as e:
        return False, f"the signed head block header does not decode: {e}"
    block_hash = hashlib.sha256(head).digest()
    if (header.log_size, header.log_root, header.federation_id) != (cp.size, cp.root_hash, fid):
        return False, f"the signed head block {header.height} is not the head of this federation's checkpointed log"
    try:
        check_head(cp, header.height, block_hash, required=required)
    except LedgerError as e:
        what = f"block {named.height} {named.block_hash.hex()}" if named is not None else "no block"
        return False, (
            f"the checkpoint names {what}, the server sent the signed header of block {header.height} "
            f"{block_hash.hex()}: {e}"
        )
    return True, None


def _split(raw: Any) -> list[bytes] | None:
    if not isinstance(raw, bytes) or len(raw) % 32:
        return None
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _consistent(old: tuple[int, bytes], new: tuple[int, bytes], proof: Any) -> str | None:
    hashes = _split(proof)
    if hashes is None:
        return "the consistency proof is not a list of 32-byte hashes"
    try:
        merkle.verify_consistency(old[0], new[0], hashes, old[1], new[1])
    except LedgerError as e:
        return f"the log is not consistent with the checkpoint of size {old[0]} this node saw (a fork?): {e}"
    return None


def committed_lists(
    proof: dict[str, Any],
    server_key: bytes,
    state: dict[str, Any],
    witnesses: Sequence[CosignerKey] = (),
    quorum: int = 0,
) -> tuple[dict[str, Any] | None, Verified | None, str | None]:
    """Verify the commit block a stage 3 request points to; return (commitment, (size, root), problem).

    The commitment entry must be in the log of a checkpoint signed by the server that extends the
    checkpoint this node verified at stage 0 (with a witness quorum when configured: witnesses cosign one
    history only, so a forked commitment cannot reach the quorum), and commit this round.
    """
    fid = state["header"]["federation_id"]
    last = (state["cp_size"], state["cp_root"])
    cp, problem = checkpoint_problem(
        proof.get("checkpoint"),
        server_key,
        fid,
        last,
        proof.get("consistency"),
        witnesses,
        quorum,
        proof=proof,
        head_required=bool(state.get("head_named")),
    )
    if cp is None:  # exactly when there is a problem
        return None, None, problem
    entry_bytes, index, path = proof.get("entry"), proof.get("index"), _split(proof.get("inclusion"))
    if not isinstance(entry_bytes, bytes) or not isinstance(index, int) or path is None:
        return None, cp, "the request does not carry the commitment entry with its inclusion proof"
    try:
        merkle.verify_inclusion(merkle.leaf_hash(entry_bytes), index, cp[0], path, cp[1])
        entry = decode_entry(entry_bytes)
    except LedgerError as e:
        return None, cp, f"the commitment is not in the signed log: {e}"
    if not isinstance(entry, SecAggEntry) or entry.stage != COMMIT or entry.round != state["header"]["round"]:
        return None, cp, "the entry proved is not this round's live/dropped commitment"
    try:
        commit = check_commit(entry.data)
    except EncodingError as e:
        return None, cp, f"the commitment is malformed: {e}"
    if commit["round_id"] != state["round_id"]:
        return None, cp, "the commitment is for another round header"
    keyring, problem = _genesis_keys(proof, cp, fid)
    if problem:
        return None, cp, problem
    return {**commit, "keyring": keyring}, cp, None


def _genesis_keys(proof: dict[str, Any], cp: Verified, fid: str) -> tuple[dict[str, bytes], str | None]:
    """The genesis keyring, proved to be entry 0 of the same signed log (and, for a keyring continued in
    ``keys`` entries, those proved to be entries 1..k right after it: :func:`keyring_from_proof`)."""
    if not isinstance(proof.get("genesis"), bytes) or _split(proof.get("genesis_inclusion")) is None:
        return {}, "the request does not carry the genesis entry with its inclusion proof"
    try:
        genesis = keyring_from_proof(proof, cp[0], cp[1])
    except GenesisError as e:
        return {}, f"entry 0 is not this federation's genesis: {e}"
    except LedgerError as e:
        return {}, f"the genesis keyring is not the start of the signed log: {e}"
    if genesis.federation_id != fid:
        return {}, "entry 0 is not this federation's genesis"
    return dict(genesis.client_keys), None


def sources_problem(commit: dict[str, Any], told_active: list[str], state: dict[str, Any]) -> str | None:
    """Refuse to reveal a live neighbour's seed share unless its own signed masked-input statement (in the
    commitment) shows its input carries ``threshold - 1`` live pairwise masks, one with this node if this
    node masked with it (else the neighbour's input, or the sum, would be exposed or broken)."""
    me, t = state["node_id"], state["header"]["params"]["threshold"]
    live, keyring, seen = set(commit["live"]), commit.get("keyring", {}), set()
    for o in told_active:
        if o == me:
            continue
        raw_st, sig = commit["statements"][o]
        try:
            st = StageStatement.from_bytes(raw_st)
        except EncodingError as e:
            return f"node {o}'s committed statement does not decode: {e}"
        raw = keyring.get(st.key_id)
        if raw is None or st.key_id in seen or not verify_signature(raw, sig, raw_st):
            return f"node {o}'s committed statement is not signed by a key of the genesis keyring (once)"
        seen.add(st.key_id)
        if (st.stage, st.node_id, st.round_id, st.round, st.reply["base_digest"]) != (
            MASKED,
            o,
            state["round_id"],
            state["header"]["round"],
            state["header"]["base_digest"],
        ) or st.reply["digest"] != commit["masked"][o]:
            return f"node {o}'s committed statement is not its masked input of this round"
        theirs = set(st.reply["sources"])
        if o in state.get("sources", ()) and me not in theirs:
            return f"node {o} did not mask with this node although this node masked with it (shares withheld)"
        if len(theirs & live - {o}) < t - 1:
            return f"node {o}'s input carries fewer than {t - 1} live pairwise masks: its seed would expose it"
    return None


def unmask_problem(commit: dict[str, Any], told_active: Any, told_dead: Any, state: dict[str, Any]) -> str | None:
    """Why the lists a node is told do not match the commitment, or what it must never reveal."""
    me = state["node_id"]
    if not (isinstance(told_active, list) and isinstance(told_dead, list)):
        return "the request does not carry active and dead lists"
    neigh = set(neighbours_of(state["header"], me))
    live, dropped = set(commit["live"]), set(commit["dropped"])
    if commit["masked"].get(me) != state.get("masked_digest"):
        return "the commitment does not hold this node's masked input as it sent it"
    if sorted(told_active) != sorted(neigh & live):
        return "the active list differs from the committed live nodes among this node's neighbours"
    if sorted(told_dead) != sorted(neigh & dropped):
        return "the dead list differs from the committed dropped nodes among this node's neighbours"
    for nid in told_dead:
        if nid in commit["masked"] or nid in live:
            return f"asked a key share of node {nid}, whose masked input is committed"
        if nid not in state["key_shares"]:
            return f"asked a key share of node {nid}, which never shared keys with this node"
    outside = sorted(set(state.get("sources", ())) - live - dropped)
    if outside:  # its pairwise mask with that node would stay in the sum: the aggregate is garbage
        return f"this node masked with node {outside[0]}, which the commitment names neither live nor dropped"
    for nid in told_active:
        if nid in dropped:
            return f"asked a seed share of node {nid}, which is committed as dropped"
        if nid not in state["seed_shares"]:
            return f"asked a seed share of node {nid}, which never shared keys with this node"
    if len(told_active) < state["header"]["params"]["threshold"]:
        return "fewer live neighbours than the threshold"
    if "keyring" in commit:
        problem = sources_problem(commit, told_active, state)
        if problem:
            return problem
    masking = set(told_active) & set(state.get("sources", ())) - {me}
    if len(masking) < state["header"]["params"]["threshold"] - 1:
        return (
            f"only {len(masking)} live neighbours share a pairwise mask with this node: revealing its seed "
            "would expose its input"
        )
    return None
