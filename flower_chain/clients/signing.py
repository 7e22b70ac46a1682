"""``signing_mod``: a Flower client mod that signs every train and evaluate reply.

Add it to any ClientApp, Message API or legacy ``client_fn``/``NumPyClient``,
without touching the training code::

    app = ClientApp(mods=[signing_mod])                  # Message API
    app = ClientApp(client_fn=client_fn, mods=[signing_mod])  # legacy

The key comes from ``context.node_config["signing-key"]`` or the environment
variable ``FLOWER_CHAIN_SIGNING_KEY``; where that names a directory, the node
uses ``client-<partition-id>.key`` in it, so every virtual node of a
simulation has its own key. :func:`make_signing_mod` takes a key directly.
A node without a usable key does not train: its replies are errors (the
server records ``client-error``), with one ERROR line per round naming the
key it looked for, not one traceback per message.

The mod signs only when the server sent a ledger context (a
:class:`~flower_chain.strategies.LedgerStrategy` server); with a plain Flower
server replies pass through untouched. The signed statement covers the
federation, round, ledger head, the digest of the global arrays the client
actually received, the digest of the arrays it returns, num-examples and a
digest of its metrics; v2 (the server announced its settings digest) also the
checkpoint size it verified, the round it wants receipts from and that settings
digest (pinned with ``settings-digest``). A client that verified the head block
signs only if the context's parent is that block's hash. Both array digests use the digest version the context
names (``flower-chain.digest-version``: the server's ledger's, from its
genesis; absent: the current version). A context the client cannot use — a
version it does not compute, a malformed field — is a finding and the
instruction is refused with an error reply, untrained and unsigned
(:mod:`flower_chain.clients.refusals`). It needs neither torch nor a
particular ML framework. What the server sent is checked on a background
thread while the ClientApp trains — the digest of the global model received,
then the receipt checks — and joined before the reply is signed (the anchor,
if any, is compared after training), so only the update's digest is left
after training.

Clients as witnesses: when every receipt check of an instruction passed (the
checkpoint verified and extends the last one this client saw), the reply also
carries the client's C2SP ``cosignature/v1`` of that checkpoint, by its
update-signing key under the name ``flower-chain/client/<key id>``
(:func:`flower_chain.ledger.cosignature.check_client_cosignature`), in the
``flower-chain`` record field ``cosignature`` (legacy: metric
``flower-chain.cosignature``).

Optional node config (environment fallbacks in brackets):

* ``witness-keys`` (``FLOWER_CHAIN_WITNESS_KEYS``): comma-separated cosigner
  verifier keys of trusted tlog-witnesses, with ``witness-quorum``
  (``FLOWER_CHAIN_WITNESS_QUORUM``, default 1): an update for a checkpoint
  without that many of their cosignatures is not signed (the server records
  it ``unsigned``) and the refusal counts as a receipt error;
* ``anchor`` (``FLOWER_CHAIN_ANCHOR``, ``evm+http://HOST:PORT``),
  ``anchor-contract`` (``FLOWER_CHAIN_ANCHOR_CONTRACT``) and ``anchor-owner``
  (``FLOWER_CHAIN_ANCHOR_OWNER``): the head block is compared with the anchor
  published on chain for its height (read only; needs the ``evm`` extra).
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from logging import INFO
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message
from flwr.common.logger import log as flwr_log

from flower_chain.clients.findings import ParentNotHead
from flower_chain.clients.receipts import CheckResult, ReceiptKeeper
from flower_chain.clients.refusals import keyless_reply, refuse, refused_reply, settings_refusal
from flower_chain.clients.settings import (  # noqa: F401 - the settings' names stay importable from here
    ENV_KEY,
    NODE_CONFIG_KEY,
    RUN_CONFIG_KEYS,
    KeyFallback,
    anchor_settings,
    key_path_for,
    pinned_server_key,
    settings_pin,
    witness_settings,
)
from flower_chain.clients.settings import (
    receipts_dir as _receipts_dir,
)
from flower_chain.ledger.arrays import array_digest
from flower_chain.ledger.cosignature import client_cosigner_name, note_body, sign_cosignature
from flower_chain.ledger.entries import UpdateStatement, metrics_digest
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import key_id, load_private, raw_public
from flower_chain.ledger.threads import LazyPool
from flower_chain.wire import (
    COSIGNATURE,
    LEGACY_FIELDS,
    LEGACY_LOSS,
    PENDING_ROUND,
    SEEN_SIZE,
    SIG_RECORD,
    SIGNATURE,
    STATEMENT,
    ContextProblem,
    LedgerContext,
    arrays_of,
    num_examples_of,
    parse_context,
    plain_metrics,
    record_digest,
)

log = logging.getLogger(__name__)


def _incoming(msg: Message):
    """(ledger context, its config record, incoming arrays record, legacy?) of a train/evaluate instruction.

    The context is ``None`` when the server sent none, a :class:`~flower_chain.wire.ContextProblem` when
    it is unusable (:func:`~flower_chain.wire.parse_context`, which never raises): nothing is signed then.
    """
    if msg.metadata.message_type.split(".")[0] not in ("train", "evaluate"):
        return None, None, None, False
    content = msg.content
    for name, cfg in content.config_records.items():
        ctx = parse_context(cfg)
        if ctx is not None:
            legacy = name in ("fitins.config", "evaluateins.config")
            arrays = None
            if legacy:
                arrays = content.array_records.get(name.replace(".config", ".parameters"))
            elif content.array_records:
                arrays = next(iter(content.array_records.values()))
            return ctx, cfg, arrays, legacy
    return None, None, None, False


def _metrics_record(reply: Message, kind: str, legacy: bool):
    """The record holding the reply's metrics (created for a legacy reply that has none)."""
    content = reply.content
    if legacy:
        name = f"{'fitres' if kind == 'train' else 'evaluateres'}.metrics"
        if name not in content.config_records:
            content[name] = ConfigRecord()
        return content.config_records[name]
    records = list(content.metric_records.values())
    return records[0] if records else None


def _reply_parts(reply: Message, kind: str, legacy: bool):
    """(returned arrays record or None, metrics dict, num-examples)."""
    content = reply.content
    if legacy:
        res = "fitres" if kind == "train" else "evaluateres"
        metrics_rec = content.config_records.get(f"{res}.metrics")
        metrics = plain_metrics(metrics_rec.items()) if metrics_rec is not None else {}
        n = content.metric_records.get(f"{res}.num_examples", {}).get("num_examples")
        arrays = content.array_records.get(f"{res}.parameters") if kind == "train" else None
        loss = content.metric_records.get(f"{res}.loss", {}).get("loss") if kind == "evaluate" else None
        if loss is not None:  # EvaluateRes.loss is aggregated by the server: sign it with the metrics
            metrics[LEGACY_LOSS] = float(loss)
        return arrays, metrics, int(n) if n is not None else None
    metrics = {}
    for rec in content.metric_records.values():
        metrics.update(plain_metrics(rec.items()))
    arrays = next(iter(content.array_records.values())) if (kind == "train" and content.array_records) else None
    return arrays, metrics, num_examples_of(metrics)


def cosign_checkpoint(note: str, key: Ed25519PrivateKey) -> str:
    """The client's ``cosignature/v1`` line (no final newline) of a checkpoint note it verified."""
    return sign_cosignature(note_body(note), client_cosigner_name(raw_public(key)), key).rstrip("\n")


def sign_reply(
    msg: Message,
    reply: Message,
    key: Ed25519PrivateKey,
    keeper: ReceiptKeeper | None = None,
    *,
    base_digest: bytes | None = None,
    incoming=None,
    cosignature: str | None = None,
) -> Message:
    """Attach a signed update statement to ``reply`` (the reply to ``msg``); return it.

    Parameters
    ----------
    msg, reply : Message
        The instruction and the reply to it.
    key : Ed25519PrivateKey
        The client's signing key.
    keeper : ReceiptKeeper, optional
        When given, its receipt counters for the federation are added to the reply's metrics
        before signing, and the statement (train or evaluate) is remembered for its receipt.
    base_digest : bytes, optional
        Array digest of the arrays ``msg`` carries (under the context's ``digest_version``), when the
        caller computed it already.
    incoming : tuple, optional
        ``_incoming(msg)``, when the caller computed it already.
    cosignature : str, optional
        The client's cosignature line of the checkpoint it verified (:func:`cosign_checkpoint`),
        sent beside the signature.
    """
    ctx, _cfg, received, legacy = incoming if incoming is not None else _incoming(msg)
    if not isinstance(ctx, LedgerContext) or reply.has_error():  # no context, or one the client cannot use
        return reply
    kind = msg.metadata.message_type.split(".")[0]
    if keeper is not None:
        rec = _metrics_record(reply, kind, legacy)
        if rec is not None:
            for k, v in keeper.metrics_for(ctx.federation_id).items():
                rec[k] = v
    arrays, metrics, n = _reply_parts(reply, kind, legacy)
    version = ctx.digest_version  # the server's ledger's (its genesis'): the digests it records and judges
    if base_digest is None:
        base_digest = record_digest(received, version) if received is not None else b""
    v2 = ctx.settings_digest is not None  # a server announcing its settings digest reads v2 statements
    seen, pending = _node_state(keeper, ctx) if v2 else (None, None)
    statement = UpdateStatement(
        kind=kind,
        federation_id=ctx.federation_id,
        round=ctx.round,
        key_id=key_id(key),
        parent=ctx.parent,
        base_digest=base_digest,
        arrays_digest=record_digest(arrays, version) if arrays is not None else b"",
        num_examples=-1 if n is None else n,
        metrics_digest=metrics_digest(metrics),
        seen_size=seen,
        pending_round=pending,
        settings_digest=ctx.settings_digest,
    ).to_bytes()
    signature = key.sign(statement)
    fields: dict = {STATEMENT: statement, SIGNATURE: signature}
    if keeper is not None:
        # every signed reply, train or evaluate, waits for its receipt: a poor evaluation recorded as
        # rejected or dropped is found like a censored update
        seen, pending = keeper.record(ctx.federation_id, ctx.round, statement)
    if not v2:  # v1: both travel unsigned beside the signature (v2 signs them: nothing beside it)
        fields[SEEN_SIZE], fields[PENDING_ROUND] = (-1, -1) if keeper is None else (seen, pending)
    if cosignature:
        fields[COSIGNATURE] = cosignature
    if legacy:
        rec = _metrics_record(reply, kind, legacy)
        for name, value in fields.items():
            rec[LEGACY_FIELDS[name]] = value
    else:
        reply.content[SIG_RECORD] = ConfigRecord(fields)
    return reply


def _node_state(keeper: ReceiptKeeper | None, ctx: LedgerContext) -> tuple[int, int]:
    """(size of the last checkpoint verified, oldest round still without a receipt, this one included) that a
    v2 statement signs: what the server acts on for this node (-1, -1 without receipts)."""
    if keeper is None:
        return -1, -1
    seen, first = keeper.record(ctx.federation_id, None, None)
    return seen, ctx.round if first < 0 else min(first, ctx.round)


def _check_instruction(
    keeper: ReceiptKeeper | None,
    ctx: LedgerContext,
    config: dict,
    kind: str,
    named: list | None,
) -> tuple[bytes, CheckResult | None]:
    """(digest of the global arrays received or ``b""``, the receipt checks' result or ``None`` without a keeper).

    Everything that needs only the instruction: run by :func:`make_signing_mod` on a background thread while
    the ClientApp trains. The checks' findings are logged and counted by the keeper, as before signing. (The
    anchor comparison is not among them: it runs after training, when the head is more likely anchored.)
    """
    base_digest = array_digest(named, ctx.digest_version) if named is not None else b""
    if keeper is None:
        return base_digest, None
    result = keeper.check(
        ctx.federation_id, config, kind=kind, received_digest=base_digest if named is not None else None
    )
    return base_digest, result


def _config_copy(config) -> dict:
    """The instruction's config as the server sent it (lists copied: a ClientApp may change its message)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in config.items()}


#: The threads that check instructions while ClientApps train (kept between messages, per process).
_CHECKS = LazyPool(2, "flower-chain-instruction-check")


def _checks() -> ThreadPoolExecutor:
    return _CHECKS.get()


#: In a forked child, the parent's keepers: kept referenced, never used nor closed (an SQLite connection must not
#: be used or closed across a fork).
_INHERITED: list[dict[str, tuple[dict, dict]]] = []


def _forget_checks() -> None:
    """In a forked child: open the keys and receipt stores again (the fork may have come while a check thread held
    a store's lock or transaction; the threads themselves are restarted by :class:`LazyPool`)."""
    _INHERITED.append(dict(_PROCESS_STATE))
    _PROCESS_STATE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_checks)


#: Per process, per mod (its token): the loaded keys, receipt keepers and anchors, and the rounds already logged.
#: Flower's simulation pickles the ClientApp with every message it hands a Ray worker, and a mod made by
#: make_signing_mod is pickled by value: state kept in its closure would start empty at every message (the key
#: loaded, the receipts opened, "signs with key" logged each time). Copies of one mod share this entry instead.
_PROCESS_STATE: dict[str, tuple[dict, dict]] = {}


def _process_state(token: str) -> tuple[dict, dict]:
    """(cache, reported) of the mod with ``token`` in this process."""
    return _PROCESS_STATE.setdefault(token, ({}, {}))


def make_signing_mod(
    key: Ed25519PrivateKey | str | Path | None = None,
    *,
    receipts_dir: str | Path | None = None,
    witness_keys=None,
    witness_quorum: int | None = None,
    anchor: str | None = None,
    anchor_contract: str | None = None,
    anchor_owner: str | None = None,
    cosign: bool = True,
    key_fallback: KeyFallback | None = None,
    settings_digest: str | bytes | None = None,
):
    """A signing mod with a fixed key (an Ed25519 private key or a PEM path), or per node if ``None``.

    Receipts are kept per key in ``receipts_dir/<key id>/`` (or under node config ``receipts-dir`` /
    ``FLOWER_CHAIN_RECEIPTS``, or ``receipts/<key id>/`` beside the key file): ``server-key``,
    ``state.sqlite`` and one directory per log origin (see :mod:`flower_chain.clients.receipts`);
    with a key object and no directory, receipts are not checked.

    Parameters
    ----------
    key : Ed25519PrivateKey, str or Path, optional
        The signing key, or ``None`` for each node's key from its node config / environment.
    receipts_dir : str or Path, optional
        Where receipts are kept (per key id).
    witness_keys : str or sequence, optional
        Trusted witness verifier keys (comma-separated text, or a list); default: node config
        ``witness-keys`` / ``FLOWER_CHAIN_WITNESS_KEYS``.
    witness_quorum : int, optional
        Cosignatures by them each checkpoint needs (default: node config ``witness-quorum`` /
        ``FLOWER_CHAIN_WITNESS_QUORUM``, else 1).
    anchor, anchor_contract, anchor_owner : str, optional
        The EVM anchor to compare checkpoints with (default: node config ``anchor``,
        ``anchor-contract``, ``anchor-owner`` / their environment variables).
    cosign : bool
        Return the client's cosignature of every checkpoint whose checks all passed (default True).
    key_fallback : callable, optional
        An application's own key location when no setting names one
        (:func:`~flower_chain.clients.settings.key_path_for`).
    settings_digest : str or bytes, optional
        The strategy settings digest this node consents to (64 hex digits or 32 bytes: the genesis
        ``config_digest``); default: node config ``settings-digest`` / ``FLOWER_CHAIN_SETTINGS_DIGEST``.
        An instruction announcing another digest, or none, is refused untrained and unsigned.

    Raises
    ------
    KeyFileError
        At the first instruction: witness checks or an anchor configured without a receipts directory.
    """
    fixed_path = Path(key) if isinstance(key, (str, Path)) else None
    fixed = load_private(key) if fixed_path is not None else key
    # cache: key path -> (key, receipts, anchor, settings pin); reported: (federation, key or context error) ->
    # the last round it was logged. Both per process, shared by every copy of this mod (_PROCESS_STATE).
    token = uuid.uuid4().hex

    def signing_mod(msg: Message, context: Context, call_next) -> Message:
        cache, reported = _process_state(token)
        incoming = _incoming(msg)
        ctx, config, received, _ = incoming
        if ctx is None:
            return call_next(msg, context)
        try:  # a node without a usable key: one ERROR line per round and an error reply, not a traceback
            path = fixed_path if fixed is not None else key_path_for(context, key_fallback)
            cache_key = str(path) if path is not None else "fixed"
            if cache_key not in cache:
                signer = fixed if fixed is not None else load_private(path)
        except KeyFileError as e:
            if isinstance(ctx, ContextProblem):
                return refused_reply(msg, ctx, None, reported)
            return keyless_reply(msg, ctx, e, reported)
        if cache_key not in cache:
            kid = key_id(signer)
            where = Path(receipts_dir) / kid if receipts_dir is not None else _receipts_dir(context, path, kid)
            witnesses, quorum = witness_settings(context, witness_keys, witness_quorum)
            anchors = anchor_settings(context, anchor, anchor_contract, anchor_owner)
            if where is None and (quorum or anchors is not None):
                raise KeyFileError(
                    "witness and anchor checks need a receipts directory (make_signing_mod("
                    "receipts_dir=...), node config 'receipts-dir' or FLOWER_CHAIN_RECEIPTS)"
                )
            keeper = (
                ReceiptKeeper(where, pinned_server_key(context), witnesses=witnesses, witness_quorum=quorum)
                if where
                else None
            )
            cache[cache_key] = (signer, keeper, anchors, settings_pin(context, settings_digest))
            # through Flower's logger, where a user sees it: once per key and ClientApp process, not per message
            flwr_log(
                INFO,
                "flower-chain: node %s signs with key %s (%s)",
                context.node_id,
                kid,
                path if path is not None else "given to make_signing_mod",
            )
        signer, keeper, anchors, pin = cache[cache_key]
        if isinstance(
            ctx, ContextProblem
        ):  # e.g. a digest version this client does not know: no training, no signature
            return refused_reply(msg, ctx, keeper, reported)
        unconsented = settings_refusal(ctx, pin, keeper)  # settings this node did not consent to: no training
        if unconsented is not None:
            return refuse(msg, ctx.federation_id, unconsented, keeper, reported)
        # What the server sent is checked on a background thread while the ClientApp trains (issue 21): the
        # global model's digest, then the receipt checks (checkpoint, proofs, witnesses), all done before
        # anything is signed; only the update's digest is left after training. The arrays are views of the
        # message's immutable bytes and the config a copy, both taken here before training (a ClientApp that
        # changes its message changes nothing checked). Under the digest version of the server's ledger.
        named = list(arrays_of(received)) if received is not None else None
        kind = msg.metadata.message_type.split(".")[0]
        checks = _checks().submit(_check_instruction, keeper, ctx, _config_copy(config), kind, named)
        try:
            reply = call_next(msg, context)
        finally:  # joined before signing; the receipt checks are recorded even when the ClientApp raises
            base_digest, result = checks.result()
            if keeper is not None and result is not None and anchors is not None:
                # after training, not during it: the server anchors each block off its critical path, so the
                # head named by a fresh instruction is more likely anchored (and a conflicting anchor seen) now
                keeper.check_anchor(ctx.federation_id, result, anchors)
        if result is not None and not result.witnessed:
            log.error(
                "flower-chain: the checkpoint of round %d lacks the witness quorum: this update is not signed",
                ctx.round,
            )
            return reply  # unsigned: the server records it as such, the refusal is counted as a receipt error
        if result is not None and result.header is not None and ctx.parent != result.head_hash:
            # the signature binds the head this client verified, never another history the server names
            return refuse(
                msg, ctx.federation_id, ParentNotHead(ctx.parent, result.header, result.head_hash), keeper, reported
            )
        cosig = cosign_checkpoint(result.note, signer) if cosign and result is not None and result.cosignable else None
        return sign_reply(msg, reply, signer, keeper, base_digest=base_digest, incoming=incoming, cosignature=cosig)

    return signing_mod


#: The mod for ``ClientApp(mods=[signing_mod])``: each node's key from its node config or environment.
signing_mod = make_signing_mod()
