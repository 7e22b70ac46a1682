"""The verdict policy: which replies of a round are accepted, and why the others are not.

One function, :func:`judge_round`, decides every verdict. The server calls it
on the replies it received (``flower_chain.strategies``); the auditor's
``verify`` calls it on the update entries recorded in each block, with
:func:`rules_for_block` and :func:`evidence_of`, and fails where the recorded
verdict differs. Nothing here imports flwr or torch, and nothing depends on
what only the server saw, except the *precheck*: a verdict the server reached
before any rule here could run (a Flower error reply, bytes that do not
parse). Those are the verdicts an auditor cannot re-derive from the ledger,
and ``verify`` reports them as such.

Rules, in order (the first that fails is the reply's reason):

1. precheck (``client-error``, ``malformed``);
2. ``unsigned``: no statement or no signature;
3. ``malformed``: the statement does not decode;
4. ``unknown-key``, ``revoked-key``, ``bad-signature`` (Ed25519, under the
   genesis key the statement names; a revocation counts from the block after it);
5. ``wrong-round`` (kind or round), ``wrong-federation``;
   ``wrong-settings``: a v2 statement names another settings digest than the genesis' ``config_digest``
   (the client consented to other aggregation settings; a v1 statement signs none);
6. ``stale-parent``: the statement names another ledger head than the one the
   round was configured on (the block's ``prev_hash``);
7. ``wrong-base-model``: the client trained on (train) or evaluated (evaluate) other arrays than
   the round's global model (the block's ``model_before``; an evaluate block records the model it
   evaluates as both ``model_before`` and ``model_after``);
8. ``digest-mismatch`` (arrays), ``num-examples-mismatch``,
   ``digest-mismatch`` (metrics);
9. ``malformed``: num-examples given but not positive; a metric that is not finite; (train) array names, shapes or
   exact dtypes differ from the global model; a non-finite value;

then over the whole round:

10. ``equivocation``: a key that signed two *different* statements for this
    federation, round and kind loses every reply carrying such a statement
    (both statements stay on the ledger as evidence);
11. ``duplicate``: the same key accepted twice: every later copy;
12. ``malformed``: a metric schema (names; number, or list of n) other than
    the one most accepted replies share (Flower's strategies aggregate metrics
    name by name); on a tie for the most, every tied reply (one client never
    outvotes another). flower-chain's own counters are not part of it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from flower_chain.ledger.arrays import ArrayMeta
from flower_chain.ledger.entries import UpdateEntry, UpdateStatement, metrics_digest
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.text import safe_text

OK = "ok"
#: Verdicts :func:`judge_round` reaches only after the reply's signature verified under its genesis key
#: (a reply with one of them may be attributed to the key it names: receipts, per-key history).
VERIFIED_REASONS = frozenset(
    {
        OK,
        "wrong-round",
        "wrong-federation",
        "stale-parent",
        "wrong-base-model",
        "digest-mismatch",
        "num-examples-mismatch",
        "duplicate",
        "equivocation",
        "wrong-settings",
    }
)
#: Of those, the verdicts of a statement for the round's own federation, round and kind: the key's reply to
#: this round (``wrong-round``/``wrong-federation`` are replays of statements made for another).
CURRENT_STATEMENT_REASONS = VERIFIED_REASONS - {"wrong-round", "wrong-federation"}
#: Rejections a client's own valid signature proves: they follow from what the client signed for this round
#: (the parent, base model and settings digest it named, a second or contradicting statement of its key, arrays
#: whose signed digest the stored blob matches but whose layout or values break the rules). Every other rejection rests
#: on evidence only the server recorded: no valid signature, the digest or example count the server says it
#: received (``digest-mismatch``, ``num-examples-mismatch``), or an old statement the server filed under this
#: round (``wrong-round``, ``wrong-federation``) — consistent with the ledger, not proven by it.
PROVEN_REJECTIONS = frozenset(
    {"stale-parent", "wrong-base-model", "wrong-settings", "duplicate", "equivocation", "malformed"}
)
#: Verdicts only the server can reach (the ledger does not hold what they depend on).
PRECHECK_REASONS = ("client-error", "malformed")
#: Upper bound on a statement's size (a real one is ~300 bytes).
MAX_STATEMENT = 4096
MAX_SIGNATURE = 64

KEY_ID = re.compile(r"[0-9a-f]{16}")  # 16 lowercase hex digits (flower_chain.ledger.keys.key_id)


@dataclass(frozen=True)
class RoundRules:
    """What the verdicts of one round depend on, all of it on the ledger.

    Attributes
    ----------
    federation_id, kind, round
        The round's identity (``kind``: ``train`` or ``evaluate``).
    parent : bytes
        Hash of the ledger head the round was configured on (the block's ``prev_hash``).
    base_digest : bytes
        Array digest of the round's global model, the one trained on or evaluated (the block's
        ``model_before``).
    keys : Mapping[str, bytes]
        The genesis keyring: key id -> raw Ed25519 public key.
    revoked : frozenset[str]
        Key ids revoked in earlier blocks.
    template : ArrayMeta or None
        Names, shapes and dtypes of the global model's arrays; ``None`` when unknown
        (an auditor without the model blob): the array-shape rule is then skipped.
    settings_digest : bytes
        The genesis' ``config_digest``: a v2 statement must name it (``wrong-settings``). Every caller
        passes it; the default (empty) matches no v2 statement, so a caller that forgets fails closed.
    """

    federation_id: str
    kind: str
    round: int
    parent: bytes
    base_digest: bytes
    keys: Mapping[str, bytes]
    revoked: frozenset[str] = frozenset()
    template: ArrayMeta | None = None
    settings_digest: bytes = b""


@dataclass(frozen=True)
class Evidence:
    """One reply as the policy sees it: exactly what its ledger entry records, plus what only arrays show.

    ``arrays_meta`` and ``nonfinite`` come from the reply's arrays (``None``:
    not known, e.g. to an auditor without the update's blob). ``precheck`` is a
    (reason, detail) the server reached while parsing the reply.
    """

    statement: bytes = b""
    signature: bytes = b""
    num_examples: int = -1
    arrays_digest: bytes = b""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    arrays_meta: ArrayMeta | None = None
    nonfinite: str | None = None
    precheck: tuple[str, str] | None = None


@dataclass(frozen=True)
class Verdict:
    """The policy's decision on one reply.

    ``key_id`` is the key the statement names ("" when there is none);
    ``verified`` is True when the signature verified under that genesis key, the
    only case in which the reply may be attributed to the key (receipts, history).
    """

    reason: str
    detail: str = ""
    key_id: str = ""
    verified: bool = False
    statement_ok: bool = False  # verified, and for this federation, round and kind (equivocation evidence)

    @property
    def accepted(self) -> bool:
        return self.reason == OK


SignatureCheck = Callable[[bytes, bytes, bytes], bool]  # (raw public key, signature, message) -> valid


@lru_cache(maxsize=1 << 15)
def decode_statement(data: bytes) -> UpdateStatement:
    """:meth:`UpdateStatement.from_bytes`, remembered (the server and the judge's workers decode each once)."""
    return UpdateStatement.from_bytes(data)


def _one(rules: RoundRules, ev: Evidence, check: SignatureCheck) -> Verdict:
    if ev.precheck is not None:
        return Verdict(*ev.precheck)
    if not ev.statement or not ev.signature:
        return Verdict("unsigned", "the reply carries no flower-chain signature")
    if len(ev.statement) > MAX_STATEMENT:
        return Verdict("malformed", f"statement of {len(ev.statement)} bytes (at most {MAX_STATEMENT})")
    try:
        st = decode_statement(ev.statement)
    except (LedgerError, TypeError, ValueError) as e:
        return Verdict("malformed", f"statement does not decode: {safe_text(e, 200)}")
    kid = st.key_id if KEY_ID.fullmatch(st.key_id) else ""  # only a well-formed key id is recorded
    raw = rules.keys.get(kid)
    if raw is None:
        return Verdict("unknown-key", f"key {safe_text(st.key_id, 40)} is not in the genesis keyring", kid)
    if kid in rules.revoked:
        return Verdict("revoked-key", f"key {kid} was revoked", kid)
    if len(ev.signature) != MAX_SIGNATURE or not check(raw, ev.signature, ev.statement):
        return Verdict("bad-signature", "the signature does not verify under the key it names", kid)
    ours = (st.kind, st.federation_id, st.round) == (rules.kind, rules.federation_id, rules.round)

    def v(reason: str, detail: str = "") -> Verdict:
        return Verdict(reason, detail, kid, True, ours)

    if st.kind != rules.kind:
        return v("wrong-round", f"statement is for a {safe_text(st.kind, 20)} reply, not {rules.kind}")
    if st.federation_id != rules.federation_id:
        return v("wrong-federation", f"statement is for federation {safe_text(st.federation_id, 80)!r}")
    if st.round != rules.round:
        return v("wrong-round", f"statement is for round {st.round}, this is round {rules.round}")
    if st.settings_digest is not None and st.settings_digest != rules.settings_digest:
        return v("wrong-settings", "the client signed another settings digest than the genesis records")
    if st.parent != rules.parent:
        return v("stale-parent", "statement names another ledger head than the one this round was built on")
    if st.base_digest != rules.base_digest:
        did = "trained on" if rules.kind == "train" else "evaluated"
        return v("wrong-base-model", f"the client {did} other arrays than this round's global model")
    if st.arrays_digest != ev.arrays_digest:
        return v("digest-mismatch", "the arrays differ from the ones the client signed")
    if st.num_examples != ev.num_examples:
        return v("num-examples-mismatch", f"signed num-examples {st.num_examples}, reply says {ev.num_examples}")
    try:
        metrics_ok = st.metrics_digest == metrics_digest(dict(ev.metrics))
    except LedgerError:
        metrics_ok = False
    if not metrics_ok:
        return v("digest-mismatch", "the metrics differ from the ones the client signed")
    if ev.num_examples == 0 or ev.num_examples < -1:  # -1: the reply carries no count (weighed by another metric)
        return v("malformed", f"num-examples {ev.num_examples} is not positive")
    bad_metric = _nonfinite_metric(ev.metrics)
    if bad_metric is not None:  # a NaN loss turns QFedAvg's model into NaN
        return v("malformed", f"metric {safe_text(bad_metric, 60)!r} is not finite")
    if rules.kind == "train":
        if rules.template is not None and ev.arrays_meta is not None and tuple(ev.arrays_meta) != rules.template:
            return v("malformed", _template_difference(rules.template, ev.arrays_meta))
        if ev.nonfinite is not None:
            return v("malformed", f"array {safe_text(ev.nonfinite, 60)!r} has non-finite values")
    return v(OK)


def _nonfinite_metric(metrics: Mapping[str, Any]) -> str | None:
    """The name of the first metric holding a NaN or infinite value, if any."""
    for name, value in metrics.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            return str(name)
    return None


def _template_difference(template: ArrayMeta, got: ArrayMeta) -> str:
    if len(template) != len(got):
        return f"{len(got)} arrays, the global model has {len(template)}"
    for (n1, s1, d1), (n2, s2, d2) in zip(template, got):
        if n1 != n2:
            return f"array {safe_text(n2, 60)!r} where the global model has {safe_text(n1, 60)!r}"
        if s1 != s2:
            return f"array {safe_text(n1, 60)!r} has shape {s2}, the global model {s1}"
        if d1 != d2:
            return f"array {safe_text(n1, 60)!r} has dtype {safe_text(d2, 20)}, the global model {d1}"
    return "arrays differ from the global model"


def judge_round(
    rules: RoundRules, evidence: Sequence[Evidence], check: SignatureCheck = verify_signature
) -> list[Verdict]:
    """The verdict on every reply of one round, in the order given (the order they are recorded in).

    Parameters
    ----------
    rules : RoundRules
        The round's context.
    evidence : sequence of Evidence
        The replies, in arrival (= ledger) order.
    check : callable, optional
        ``check(raw_public_key, signature, statement) -> bool``; the server passes
        results it computed on worker threads. Default: Ed25519 verification.
    """
    verdicts = [_one(rules, ev, check) for ev in evidence]
    # 10. equivocation: two different statements for this round signed by one key
    statements: dict[str, set[bytes]] = {}
    for ev, vd in zip(evidence, verdicts):
        if vd.statement_ok:
            statements.setdefault(vd.key_id, set()).add(bytes(ev.statement))
    equivocators = {k for k, s in statements.items() if len(s) > 1}
    for i, vd in enumerate(verdicts):
        if vd.statement_ok and vd.key_id in equivocators:
            verdicts[i] = Verdict(
                "equivocation",
                f"key {vd.key_id} signed {len(statements[vd.key_id])} different "
                "statements for this round: stolen or misused; revoke it",
                vd.key_id,
                True,
                True,
            )
    # 11. one accepted reply per key
    seen: set[str] = set()
    for i, vd in enumerate(verdicts):
        if vd.accepted:
            if vd.key_id in seen:
                verdicts[i] = Verdict(
                    "duplicate", f"a second copy of {vd.key_id}'s reply in this round", vd.key_id, True, True
                )
            seen.add(vd.key_id)
    # 12. the accepted set shares one metric schema (names, scalar or list, list lengths): Flower's strategies
    # aggregate metrics name by name and element by element. The schema most accepted replies share wins; on a
    # tie for the most, no schema wins and every tied reply is rejected: one client never outvotes another.
    schemas = [metric_schema(ev.metrics) for ev in evidence]
    counts = Counter(schemas[i] for i, vd in enumerate(verdicts) if vd.accepted)
    if len(counts) > 1:
        top = max(counts.values())
        leaders = [sc for sc, n in counts.items() if n == top]
        best = leaders[0] if len(leaders) == 1 else None
        for i, vd in enumerate(verdicts):
            if vd.accepted and schemas[i] != best:
                why = (
                    "differ from the schema most of the round's replies share"
                    if best is not None
                    else "tie with another schema for the most replies: no schema is the round's"
                )
                verdicts[i] = Verdict(
                    "malformed", f"metrics {safe_text(_schema_text(schemas[i]), 200)} {why}", vd.key_id, True, True
                )
    return verdicts


#: Metric names of flower-chain's own (receipt counters, a legacy evaluate loss): not part of the schema.
OWN_METRICS = ("flower-chain-", "flower-chain.")


def strategy_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A reply's metrics as the wrapped strategy gets them: without flower-chain's own (the server hands
    on exactly these; ``flower-chain ledger audit`` replays with exactly these)."""
    return {k: v for k, v in metrics.items() if not str(k).startswith(OWN_METRICS)}


def metric_schema(metrics: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What the accepted replies of a round must share: each metric's name and shape (number, list of n, ...)."""
    out = []
    for name, value in metrics.items():
        if str(name).startswith(OWN_METRICS):
            continue
        if isinstance(value, (list, tuple)):
            shape = f"list[{len(value)}]"
        elif isinstance(value, bool):
            shape = "bool"
        elif isinstance(value, (int, float)):
            shape = "number"
        else:
            shape = type(value).__name__
        out.append((str(name), shape))
    return tuple(sorted(out))


def _schema_text(schema: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f"{n}: {t}" for n, t in schema) + "}"


def equivocating_keys(verdicts: Sequence[Verdict]) -> set[str]:
    """Key ids the verdicts of a round found equivocating."""
    return {v.key_id for v in verdicts if v.reason == "equivocation"}


# -- the auditor's side ----------------------------------------------------------------------------------


def evidence_of(
    entry: UpdateEntry,
    *,
    arrays_meta: ArrayMeta | None = None,
    nonfinite: str | None = None,
    precheck: tuple[str, str] | None = None,
) -> Evidence:
    """The evidence an update entry records (plus, where the update's blob is stored, its arrays' shape)."""
    return Evidence(
        statement=entry.statement,
        signature=entry.signature,
        num_examples=entry.num_examples,
        arrays_digest=entry.arrays_digest,
        metrics=entry.metrics,
        arrays_meta=arrays_meta,
        nonfinite=nonfinite,
        precheck=precheck,
    )


def recorded_reason(entry: UpdateEntry) -> str:
    """The verdict an entry records, in the policy's terms (``ok`` for accepted)."""
    return OK if entry.verdict == "accepted" else entry.reason
