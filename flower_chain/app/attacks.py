"""Adversarial clients for experiments: ``run.py --attack KIND --attackers K``.

:func:`make_client_mod` returns the mod the bundled ClientApp uses: honest
nodes sign through :data:`~flower_chain.app.keys.demo_signing_mod`; the
first ``K`` partitions misbehave as ``KIND`` says. Cryptographic attacks
(the server must reject them, each with its reason code):

=================  =============================================================
``unsigned``       replies without a signature
``forged``         signed with a key that is not in the keyring
``tamper``         arrays changed after signing
``replay``         from round 2 on, the reply signed in an earlier round
``cross-run``      signed for another federation
``stale``          from round 2 on, trained on the round-1 global model
``duplicate``      all attackers sign with one shared key (a cloned client): equivocation
``malformed``      a NaN in the returned arrays (signed)
``num-examples-lie`` num-examples inflated after signing
=================  =============================================================

Attacks a signature cannot stop (validly signed; a robust inner strategy
and the ledger's attribution by key id are the defence): ``scale`` (the
update times 10), ``sign-flip`` (the update times -5), ``label-flip``
(training on labels ``9 - y``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flower_chain.app.keys import demo_key_path as key_path_for
from flower_chain.app.keys import demo_signing_mod as signing_mod
from flower_chain.clients.receipts import ReceiptKeeper
from flower_chain.clients.signing import _incoming, sign_reply
from flower_chain.ledger.keys import load_private
from flower_chain.wire import CTX_FEDERATION, LedgerContext, arrays_of

CRYPTO_ATTACKS = (
    "unsigned",
    "forged",
    "tamper",
    "replay",
    "cross-run",
    "stale",
    "duplicate",
    "malformed",
    "num-examples-lie",
)
POISONING_ATTACKS = ("scale", "sign-flip", "label-flip")
ATTACKS = CRYPTO_ATTACKS + POISONING_ATTACKS
EXPECTED_REASON = {
    "unsigned": "unsigned",
    "forged": "unknown-key",
    "tamper": "digest-mismatch",
    "replay": "wrong-round",
    "cross-run": "wrong-federation",
    "stale": "wrong-base-model",
    "duplicate": "equivocation",
    "malformed": "malformed",
    "num-examples-lie": "num-examples-mismatch",
}
LABEL_FLIP = "flower-chain.attack.label-flip"
STALE_KEY = "flower-chain.attack.stale"
REPLAY_PREFIX = "flower-chain.attack.replay."


def _with_arrays(msg: Message, record: ArrayRecord) -> Message:
    """``msg`` with its (single) ArrayRecord replaced, same metadata."""
    content = RecordDict()
    for name, rec in msg.content.items():
        content[name] = record if isinstance(rec, ArrayRecord) else rec
    return Message(content=content, metadata=msg.metadata)


def _record(named: Iterable[tuple[str, np.ndarray]]) -> ArrayRecord:
    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in named})


def _reply_arrays_name(reply: Message) -> str:
    return next(iter(reply.content.array_records))


def make_client_mod(attack: str | None = None, attackers: int | None = None):
    """The bundled ClientApp's mod: sign honestly, or misbehave on partitions ``0 .. attackers-1``.

    ``None`` reads ``attack`` / ``attackers`` from the run config at each message (``flwr run``).
    """
    if attack and attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    state: dict = {"forged": None}  # made lazily: the app must stay picklable
    fixed = (attack, attackers)

    def mod(msg: Message, context: Context, call_next) -> Message:
        attack = fixed[0] if fixed[0] is not None else str(context.run_config.get("attack", ""))
        attackers = fixed[1] if fixed[1] is not None else int(context.run_config.get("attackers", 0))
        pid = int(context.node_config.get("partition-id", -1))
        kind = msg.metadata.message_type.split(".")[0]
        if not attack or pid >= attackers or pid < 0 or kind != "train":
            return signing_mod(msg, context, call_next)
        ctx, config, received, _legacy = _incoming(msg)
        ledger = isinstance(ctx, LedgerContext)  # not None (a plain server) nor a ContextProblem (unusable)
        # Against a plain Flower server (no ledger context) nothing is signed, but every attack that
        # changes what is sent still happens: that is the comparison run.
        sign = signing_mod if ledger else (lambda m, c, nxt: nxt(m, c))
        if received is None and msg.content.array_records:
            received = next(iter(msg.content.array_records.values()))
        server_round = (
            ctx.round
            if isinstance(ctx, LedgerContext)
            else int(next((r.get("server-round", 0) for r in msg.content.config_records.values()), 0))
        )
        if attack == "unsigned" or (not ledger and attack in ("forged", "cross-run", "duplicate")):
            return call_next(msg, context)

        def keeper() -> ReceiptKeeper:
            # attackers that sign themselves keep receipts too, so their metrics have the honest keys
            keepers = state.setdefault("keepers", {})
            if pid not in keepers:
                keepers[pid] = ReceiptKeeper(key_path_for(context).parent / "receipts" / f"attacker-{pid}")
            return keepers[pid]

        if attack == "forged":
            state["forged"] = state["forged"] or Ed25519PrivateKey.generate()
            return sign_reply(msg, call_next(msg, context), state["forged"], keeper())
        if attack == "cross-run":
            forged_cfg = ConfigRecord({**dict(config.items()), CTX_FEDERATION: "another-federation"})
            content = RecordDict({n: (forged_cfg if r is config else r) for n, r in msg.content.items()})
            stolen = Message(content=content, metadata=msg.metadata)
            return sign_reply(stolen, call_next(msg, context), _own_key(context), keeper())
        if attack == "duplicate":
            shared = load_private(key_path_for(context).with_name("client-0.key"))
            return sign_reply(msg, call_next(msg, context), shared, keeper())
        # State that must outlive one message lives in the node's context.state (Flower keeps it per node;
        # in a simulation any worker process may handle the node's next message).
        if attack == "stale":
            if server_round <= 1 or STALE_KEY not in context.state:
                context.state[STALE_KEY] = received
                return sign(msg, context, call_next)
            return sign(_with_arrays(msg, context.state[STALE_KEY]), context, call_next)
        if attack == "replay":
            saved = {n[len(REPLAY_PREFIX) :]: r for n, r in context.state.items() if n.startswith(REPLAY_PREFIX)}
            if saved:
                return Message(RecordDict(saved), reply_to=msg)
            reply = sign(msg, context, call_next)
            for n, r in reply.content.items():
                context.state[REPLAY_PREFIX + n] = r
            return reply
        if attack == "label-flip":
            for rec in msg.content.config_records.values():
                rec[LABEL_FLIP] = True
                break
            return sign(msg, context, call_next)
        if attack in ("scale", "sign-flip", "malformed"):

            def poisoned(m: Message, c: Context) -> Message:
                reply = call_next(m, c)
                name = _reply_arrays_name(reply)
                base = dict(arrays_of(received))
                out = []
                for n, a in arrays_of(reply.content[name]):
                    b = np.asarray(base[n], dtype=a.dtype)
                    if attack == "scale":
                        a = b + 10 * (a - b)
                    elif attack == "sign-flip":
                        a = b - 5 * (a - b)
                    else:
                        a = np.array(a)
                        if a.dtype.kind == "f" and a.size and not out:
                            a.reshape(-1)[0] = np.nan
                    out.append((n, a))
                reply.content[name] = _record(out)
                return reply

            return sign(msg, context, poisoned)
        reply = sign(msg, context, call_next)
        if attack == "tamper":
            name = _reply_arrays_name(reply)
            reply.content[name] = _record((n, np.asarray(a) + 0.01) for n, a in arrays_of(reply.content[name]))
        elif attack == "num-examples-lie":
            rec = next(iter(reply.content.metric_records.values()))
            rec["num-examples"] = int(rec["num-examples"]) * 100
        return reply

    return mod


def _own_key(context: Context) -> Ed25519PrivateKey:
    return load_private(key_path_for(context))
