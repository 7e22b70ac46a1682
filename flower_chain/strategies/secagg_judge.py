"""Judging SecAgg+ stage replies: every reply becomes a :class:`SecAggEntry` verdict, never an exception.

The rules (docs/secagg.md §3.2), in order: a reply that is an error or absent (``client-error``,
``no-reply``), carries no statement (``unsigned``), does not decode (``malformed``), names a key not in
the genesis keyring or revoked (``unknown-key``, ``revoked-key``), whose signature fails
(``bad-signature``), that answers another federation, round, round header, stage, node or request
(``replayed``), a second reply or a key bound to another node (``duplicate``), a key other than the one
the node set up with (``mismatch``), a payload that is not what the statement says (``malformed`` /
``mismatch``), a stage 3 refusal (``refused``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flower_chain.ledger.arrays import array_digest, check_version, decode_arrays
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import ACCEPTED, REJECTED
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.secagg import (
    MASKED,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    SecAggEntry,
    StageStatement,
    request_digest,
)
from flower_chain.ledger.text import safe_text
from flower_chain.strategies.secagg_unmask import public_key_problem

RECORD = "flower-chain.secagg"


@dataclass
class Verdict:
    """A judged stage reply: the entry to record and, when accepted, what the reply carried."""

    entry: SecAggEntry
    statement: StageStatement | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.entry.verdict == ACCEPTED


class StageJudge:
    """Judges the replies of one SecAgg+ round against what was asked.

    Parameters
    ----------
    federation_id, server_round, round_id
        What every statement must name.
    keys : dict
        The genesis keyring (key id -> raw Ed25519 key).
    revoked : set
        Revoked key ids.
    base_digest : bytes
        The round header's base model: every masked-input statement must name it.
    digest_version : int
        The ledger's array digest version (the round header's): every masked vector is digested under it.
    """

    def __init__(
        self,
        federation_id: str,
        server_round: int,
        round_id: bytes,
        keys: dict[str, bytes],
        revoked: set[str],
        *,
        base_digest: bytes,
        digest_version: int,
    ) -> None:
        self.fid, self.round, self.round_id = federation_id, int(server_round), round_id
        self.base_digest, self.digest_version = base_digest, check_version(digest_version)
        self.keys, self.revoked = keys, revoked
        self.node_key: dict[str, str] = {}  # node -> key id it set up with
        self.seen: set[tuple[str, str]] = set()  # (stage, node) answered
        self.setup_keys: dict[bytes, str] = {}  # public key -> the node whose accepted setup reply carried it

    def _entry(
        self, stage: str, nid: str, kid: str, reason: str, detail: str, st: bytes = b"", sig: bytes = b""
    ) -> SecAggEntry:
        return SecAggEntry(
            round=self.round,
            stage=stage,
            node_id=nid,
            key_id=kid,
            verdict=ACCEPTED if reason == "ok" else REJECTED,
            reason=reason,
            detail=safe_text(detail, 300),
            statement=st,
            signature=sig,
            data={},
        )

    def missing(self, stage: str, nid: str, reason: str = "no-reply", detail: str = "") -> Verdict:
        return Verdict(self._entry(stage, nid, self.node_key.get(nid, ""), reason, detail or "no reply"))

    def judge(self, stage: str, nid: str, record: Any, content: dict[str, Any], expect: dict[str, Any]) -> Verdict:
        """Judge the reply of node ``nid`` to the ``stage`` request ``content``; ``expect``: stage context."""
        try:
            return self._judge(stage, nid, record, content, expect)
        except Exception as e:  # noqa: BLE001 - the last line: whatever a reply does, it is a verdict
            return Verdict(self._entry(stage, nid, "", "malformed", f"unreadable reply: {type(e).__name__}"))

    def _judge(self, stage: str, nid: str, record: Any, content: dict[str, Any], expect: dict[str, Any]) -> Verdict:
        raw = record.get("statement") if record is not None else None
        sig = record.get("signature") if record is not None else None
        if not isinstance(raw, bytes) or not isinstance(sig, bytes) or not raw:
            return Verdict(self._entry(stage, nid, "", "unsigned", "the reply carries no signed stage statement"))
        try:
            st = StageStatement.from_bytes(raw)
        except EncodingError as e:
            return Verdict(self._entry(stage, nid, "", "malformed", f"statement: {e}", raw, sig))
        kid = st.key_id
        pub = self.keys.get(kid)
        if pub is None:
            return Verdict(self._entry(stage, nid, kid, "unknown-key", "key not in the genesis keyring", raw, sig))
        if kid in self.revoked:
            return Verdict(self._entry(stage, nid, kid, "revoked-key", "the key is revoked", raw, sig))
        if not verify_signature(pub, sig, raw):
            return Verdict(self._entry(stage, nid, kid, "bad-signature", "the signature does not verify", raw, sig))
        for name, got, want in (
            ("federation", st.federation_id, self.fid),
            ("round", st.round, self.round),
            ("round header", st.round_id, self.round_id),
            ("stage", st.stage, stage),
            ("node", st.node_id, nid),
            ("request", st.request, request_digest(stage, content)),
        ):
            if got != want:
                return Verdict(
                    self._entry(stage, nid, kid, "replayed", f"the statement answers another {name}", raw, sig)
                )
        if (stage, nid) in self.seen:
            return Verdict(self._entry(stage, nid, kid, "duplicate", "a second reply to this stage", raw, sig))
        if stage == SETUP:
            if kid in self.node_key.values():
                return Verdict(self._entry(stage, nid, kid, "duplicate", "the key set up another node", raw, sig))
        elif self.node_key.get(nid) != kid:
            return Verdict(self._entry(stage, nid, kid, "mismatch", "another key than the node set up with", raw, sig))
        try:
            payload = decode(record.get("payload")) if isinstance(record.get("payload"), bytes) else None
            if not isinstance(payload, dict):
                raise EncodingError("the payload is not a map")
            problem = _PAYLOAD[stage](
                st.reply,
                payload,
                {**expect, "node": nid, "base_digest": self.base_digest, "version": self.digest_version},
            )
        except EncodingError as e:
            return Verdict(self._entry(stage, nid, kid, "malformed", f"reply: {e}", raw, sig))
        if problem:
            return Verdict(self._entry(stage, nid, kid, "mismatch", problem, raw, sig))
        if stage == SETUP:  # a key another node set up with is a copy: it never reaches the neighbours
            owner = next((self.setup_keys[k] for k in (st.reply["pk1"], st.reply["pk2"]) if k in self.setup_keys), "")
            if owner:
                return Verdict(
                    self._entry(stage, nid, kid, "duplicate", f"a public key node {owner} set up with", raw, sig)
                )
            self.setup_keys.update({st.reply["pk1"]: nid, st.reply["pk2"]: nid})
            self.node_key[nid] = kid
        self.seen.add((stage, nid))
        if stage == UNMASK and st.reply["refused"]:
            return Verdict(self._entry(stage, nid, kid, "refused", st.reply["refused"], raw, sig), st, payload)
        return Verdict(self._entry(stage, nid, kid, "ok", "", raw, sig), st, payload)


def _setup(reply: dict[str, Any], payload: dict[str, Any], expect: dict[str, Any]) -> str | None:
    if payload:
        raise EncodingError("a setup payload must be empty")
    if not 0 < len(reply["pk1"]) <= 1024 or not 0 < len(reply["pk2"]) <= 1024 or reply["pk1"] == reply["pk2"]:
        return "the two public keys are empty, too long or equal"
    for name in ("pk1", "pk2"):  # parsed and used as the neighbours will: a bad key never reaches them
        problem = public_key_problem(reply[name])
        if problem:
            raise EncodingError(f"the signed public key {name} {problem}")
    return None


def _share_keys(reply: dict[str, Any], payload: dict[str, Any], expect: dict[str, Any]) -> str | None:
    cts = payload.get("ciphertexts")
    if (
        sorted(payload) != ["ciphertexts"]
        or not isinstance(cts, dict)
        or not all(isinstance(c, bytes) for c in cts.values())
    ):
        raise EncodingError("a share-keys payload must map node ids to ciphertexts")
    if sorted(cts) != sorted(reply["sent"]) or any(
        hashlib.sha256(c).digest() != reply["sent"][d] for d, c in cts.items()
    ):
        return "the ciphertexts are not the ones the statement names"
    if not set(cts) <= set(expect["to"]):
        return "ciphertexts for nodes that were not this node's neighbours"
    if sorted(reply["shares"]) != sorted(set(cts) | {expect["node"]}):
        return "the share commitments are not exactly for the nodes it sent shares to and itself"
    return None


def _masked(reply: dict[str, Any], payload: dict[str, Any], expect: dict[str, Any]) -> str | None:
    if sorted(payload) != ["vector"] or not isinstance(payload["vector"], bytes):
        raise EncodingError("a masked-input payload must hold the vector")
    named = decode_arrays(payload["vector"])
    shapes = [tuple(a.shape) for _, a in named]
    v1 = (
        [s or (1,) for s in expect["shapes"]] if expect["version"] == 1 else expect["shapes"]
    )  # v1 streams: 0-d as (1,)
    if [n for n, _ in named] != [str(i) for i in range(len(named))] or shapes != v1:
        return "the masked vector does not have the model's layout (weight first)"
    mod = expect["mod_range"]
    if any(a.dtype != np.uint32 or (a.size and mod < 2**32 and a.max() >= mod) for _, a in named):
        return f"the masked vector is not uint32 in [0, {mod})"
    if array_digest(named, expect["version"]) != reply["digest"]:
        return "the masked vector's digest is not the signed one"
    if int(named[0][1].reshape(-1)[0]) != reply["weight"]:
        return "the masked weight is not the signed one"
    if reply["base_digest"] != expect["base_digest"]:
        return "the statement names another base model than the round header's base_digest"
    if not set(reply["sources"]) <= set(expect["sources"]):
        return "the node names shares from nodes it was not sent"
    # uint32: unmask accumulates into int64 (exact, no copy), in the model's shapes (a v1 (1,) is its 0-d array)
    payload["arrays"] = [a.reshape(s) for (_, a), s in zip(named, expect["shapes"])]
    return None


def _unmask(reply: dict[str, Any], payload: dict[str, Any], expect: dict[str, Any]) -> str | None:
    if payload:
        raise EncodingError("an unmask payload must be empty")
    if reply["refused"]:
        return None
    if sorted(reply["seed_shares"]) != sorted(reply["active"]) or sorted(reply["key_shares"]) != sorted(reply["dead"]):
        return "the shares revealed are not the ones asked"
    return None


_PAYLOAD = {SETUP: _setup, SHARE_KEYS: _share_keys, MASKED: _masked, UNMASK: _unmask}
