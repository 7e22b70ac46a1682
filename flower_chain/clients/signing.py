"""``signing_mod``: a Flower client mod that signs every train and evaluate reply.

Add it to any ClientApp, Message API or legacy ``client_fn``/``NumPyClient``,
without touching the training code::

    app = ClientApp(mods=[signing_mod])                  # Message API
    app = ClientApp(client_fn=client_fn, mods=[signing_mod])  # legacy

The key comes from ``context.node_config["signing-key"]`` or the environment
variable ``FLOWER_CHAIN_SIGNING_KEY``; where that names a directory, the node
uses ``client-<partition-id>.key`` in it, so every virtual node of a
simulation has its own key. :func:`make_signing_mod` takes a key directly.

The mod signs only when the server sent a ledger context (a
:class:`~flower_chain.strategies.LedgerStrategy` server); with a plain Flower
server replies pass through untouched. The signed statement covers the
federation, round, ledger head, the digest of the global arrays the client
actually received, the digest of the arrays it returns, num-examples and a
digest of its metrics. It needs neither torch nor a particular ML framework.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message

from flower_chain.ledger.entries import UpdateStatement, metrics_digest
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import key_id, load_private
from flower_chain.wire import (
    LEGACY_SIGNATURE,
    LEGACY_STATEMENT,
    SIG_RECORD,
    SIGNATURE,
    STATEMENT,
    LedgerContext,
    num_examples_of,
    plain_metrics,
    record_digest,
)

log = logging.getLogger(__name__)
ENV_KEY = "FLOWER_CHAIN_SIGNING_KEY"
NODE_CONFIG_KEY = "signing-key"


def key_path_for(context: Context) -> Path:
    """Where this node's private key is.

    In order: node config ``signing-key``, environment ``FLOWER_CHAIN_SIGNING_KEY``, and (for the
    bundled demo app under ``flwr run``) the run config's ``keys-dir`` (or ``out-dir``/keys) + ``/clients``.
    """
    value = context.node_config.get(NODE_CONFIG_KEY) or os.environ.get(ENV_KEY)
    if not value and context.run_config.get("keys-dir"):
        value = str(Path(str(context.run_config["keys-dir"])) / "clients")
    elif not value and context.run_config.get("out-dir"):
        value = str(Path(str(context.run_config["out-dir"])) / "keys" / "clients")
    if not value:
        raise KeyFileError(
            f"no signing key: set node config '{NODE_CONFIG_KEY}' (flower-supernode --node-config "
            f"\"{NODE_CONFIG_KEY}='PATH'\") or the environment variable {ENV_KEY} to a key file or a directory "
            "of client-<partition-id>.key files (create them with `flower-chain keys new`)")
    p = Path(str(value))
    if p.is_dir():
        if "partition-id" not in context.node_config:
            raise KeyFileError(f"{p} is a directory of keys but this node has no partition-id in its node config")
        p = p / f"client-{int(context.node_config['partition-id'])}.key"
    return p


def _incoming(msg: Message):
    """(ledger context, incoming arrays record, legacy?) of a train/evaluate instruction."""
    content = msg.content
    for name, cfg in content.config_records.items():
        ctx = LedgerContext.from_config(cfg)
        if ctx is not None:
            legacy = name in ("fitins.config", "evaluateins.config")
            arrays = None
            if legacy:
                arrays = content.array_records.get(name.replace(".config", ".parameters"))
            elif content.array_records:
                arrays = next(iter(content.array_records.values()))
            return ctx, arrays, legacy
    return None, None, False


def _reply_parts(reply: Message, kind: str, legacy: bool):
    """(returned arrays record or None, metrics dict, num-examples, record to put the signature in)."""
    content = reply.content
    if legacy:
        res = "fitres" if kind == "train" else "evaluateres"
        metrics_rec = content.config_records.get(f"{res}.metrics")
        metrics = plain_metrics(metrics_rec.items()) if metrics_rec is not None else {}
        n = content.metric_records.get(f"{res}.num_examples", {}).get("num_examples")
        arrays = content.array_records.get(f"{res}.parameters") if kind == "train" else None
        return arrays, metrics, int(n) if n is not None else None, metrics_rec
    metrics = {}
    for rec in content.metric_records.values():
        metrics.update(plain_metrics(rec.items()))
    arrays = next(iter(content.array_records.values())) if (kind == "train" and content.array_records) else None
    return arrays, metrics, num_examples_of(metrics), None


def sign_reply(msg: Message, reply: Message, key: Ed25519PrivateKey) -> Message:
    """Attach a signed update statement to ``reply`` (the reply to ``msg``); return it."""
    ctx, received, legacy = _incoming(msg)
    if ctx is None or reply.has_error():
        return reply
    kind = msg.metadata.message_type.split(".")[0]
    arrays, metrics, n, legacy_metrics = _reply_parts(reply, kind, legacy)
    statement = UpdateStatement(
        kind=kind,
        federation_id=ctx.federation_id,
        round=ctx.round,
        key_id=key_id(key),
        parent=ctx.parent,
        base_digest=record_digest(received) if received is not None else b"",
        arrays_digest=record_digest(arrays) if arrays is not None else b"",
        num_examples=-1 if n is None else n,
        metrics_digest=metrics_digest(metrics),
    ).to_bytes()
    signature = key.sign(statement)
    if legacy:
        if legacy_metrics is None:
            legacy_metrics = ConfigRecord()
            reply.content[f"{'fitres' if kind == 'train' else 'evaluateres'}.metrics"] = legacy_metrics
        legacy_metrics[LEGACY_STATEMENT] = statement
        legacy_metrics[LEGACY_SIGNATURE] = signature
    else:
        reply.content[SIG_RECORD] = ConfigRecord({STATEMENT: statement, SIGNATURE: signature})
    return reply


def make_signing_mod(key: Ed25519PrivateKey | str | Path | None = None):
    """A signing mod with a fixed key (an Ed25519 private key or a PEM path), or per node if ``None``."""
    fixed = load_private(key) if isinstance(key, (str, Path)) else key
    cache: dict[str, Ed25519PrivateKey] = {}

    def signing_mod(msg: Message, context: Context, call_next) -> Message:
        ctx, _, _ = _incoming(msg) if msg.metadata.message_type.split(".")[0] in ("train", "evaluate") else (
            None, None, False)
        if ctx is None:
            return call_next(msg, context)
        signer = fixed
        if signer is None:
            path = str(key_path_for(context))  # a missing key fails here, before any training
            if path not in cache:
                cache[path] = load_private(path)
            signer = cache[path]
        reply = call_next(msg, context)
        return sign_reply(msg, reply, signer)

    return signing_mod


#: The mod for ``ClientApp(mods=[signing_mod])``: each node's key from its node config or environment.
signing_mod = make_signing_mod()
