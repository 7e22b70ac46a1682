"""``secagg_mod``: the client side of flower-chain's SecAgg+ (Flower's protocol, every reply signed).

Use it in a legacy ClientApp beside the signing mod::

    app = ClientApp(client_fn=client_fn, mods=[signing_mod, secagg_mod])

``signing_mod`` signs the evaluate replies as usual and lets the SecAgg+ stages through (they carry no
plain ledger context); ``secagg_mod`` runs the four SecAgg+ stages of a train round with Flower's own
primitives (key agreement, Shamir shares, Fernet, quantization) against a
:class:`~flower_chain.strategies.LedgerSecAggPlusWorkflow` server and signs each stage reply over the
request it answers (:class:`~flower_chain.ledger.secagg.StageStatement`). Before revealing any share it
verifies that the live/dropped commitment is in the server's signed log, consistent with the checkpoint
it verified at stage 0, and that what it is asked matches it (:mod:`flower_chain.clients.secagg_checks`);
on a mismatch it sends a signed refusal instead of shares. The key is the signing mod's (node config
``signing-key`` or ``FLOWER_CHAIN_SIGNING_KEY``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from flower_chain.clients import secagg_checks as checks
from flower_chain.clients.secagg_input import mask_input
from flower_chain.clients.secagg_pins import STATE as STATE  # re-exported
from flower_chain.clients.secagg_pins import load_state, pins_path, save_state
from flower_chain.clients.settings import key_path_for, witness_settings
from flower_chain.ledger.arrays import array_digest, encode_arrays
from flower_chain.ledger.cosignature import CosignerKey
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.keys import key_id, load_private
from flower_chain.ledger.secagg import (
    MASKED,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    StageStatement,
    header_digest_version,
    request_digest,
    seed_digest,
    share_digest,
)
from flower_chain.ledger.secagg_masks import WEAK_GENERATORS
from flower_chain.ledger.text import is_decimal

log = logging.getLogger(__name__)
RECORD = "flower-chain.secagg"  # the config record of every SecAgg+ instruction and reply
NEXT = {SETUP: SHARE_KEYS, SHARE_KEYS: MASKED, MASKED: UNMASK}


class Refusal(Exception):
    """A stage this node will not answer (the mod replies with the reason as a Flower error)."""


def make_secagg_mod(
    key: Ed25519PrivateKey | str | Path | None = None,
    *,
    server_key: bytes | None = None,
    allow_weak_generator: bool = True,
    witness_keys=None,
    witness_quorum: int | None = None,
):
    """A SecAgg+ mod signing with ``key`` (or each node's signing key when ``None``).

    Parameters
    ----------
    key : Ed25519PrivateKey, str or Path, optional
        The node's update-signing key; ``None``: node config ``signing-key`` / ``FLOWER_CHAIN_SIGNING_KEY``.
    server_key : bytes, optional
        The server's raw Ed25519 key; ``None``: the first key a federation's checkpoint names is pinned.
    allow_weak_generator : bool
        Take part in rounds using Flower's 32-bit mask generator (default True; refused when False).
    witness_keys : str or sequence, optional
        Trusted witness verifier keys; every checkpoint (the commitment's included) must carry
        ``witness_quorum`` of their cosignatures. Default: node config ``witness-keys`` /
        ``FLOWER_CHAIN_WITNESS_KEYS`` (as ``signing_mod``).
    witness_quorum : int, optional
        Default: node config ``witness-quorum`` / ``FLOWER_CHAIN_WITNESS_QUORUM``, else 1.
    """
    fixed = load_private(key) if isinstance(key, (str, Path)) else key

    def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or RECORD not in msg.content.config_records:
            return call_next(msg, context)
        key_file = None if fixed is not None else key_path_for(context)
        signer = fixed if fixed is not None else load_private(key_file)
        witnesses = witness_settings(context, witness_keys, witness_quorum)
        pins = pins_path(context, key_file, key_id(signer))
        node = _Node(signer, server_key, allow_weak_generator, context, witnesses, pins)
        try:
            reply = node.answer(msg, call_next)
        except Refusal as e:
            log.error("flower-chain SecAgg+: node %s refuses: %s", context.node_id, e)
            node.save()
            raise
        node.save()
        return reply

    return secagg_mod


class _Node:
    """One node answering one SecAgg+ instruction."""

    def __init__(
        self,
        signer: Ed25519PrivateKey,
        server_key: bytes | None,
        allow_weak: bool,
        context: Context,
        witnesses: tuple[list[CosignerKey], int],
        pins: Path | None = None,
    ) -> None:
        self.signer, self.kid, self.context, self.pins = signer, key_id(signer), context, pins
        self.witnesses, self.quorum = witnesses
        self.server_key, self.allow_weak = server_key, allow_weak
        self.state, self.pins_problem = load_state(context, pins)  # pins on disk outlive a SuperNode restart

    def save(self) -> None:
        if not self.pins_problem:  # a damaged pins file stays as it is for its operator
            save_state(self.context, self.pins, self.state)

    def answer(self, msg: Message, call_next: ClientAppCallable) -> Message:
        if self.pins_problem:
            raise Refusal(self.pins_problem)
        req = checks.parse_request(msg.content.config_records[RECORD].get("request"))
        if isinstance(req, str):
            raise Refusal(req)
        stage, me = req["stage"], str(msg.metadata.dst_node_id)
        if stage == SETUP:
            reply, payload = self._setup(req, me), {}
        else:
            rnd = self.state.get("round")
            if rnd is None or req["round_id"] != rnd["round_id"] or rnd["node_id"] != me:
                raise Refusal(f"a {stage} instruction for a round this node did not set up")
            if NEXT.get(rnd["stage"]) != stage:
                raise Refusal(f"a {stage} instruction after stage {rnd['stage']} (each stage is answered once)")
            rnd["stage"] = stage
            if stage == SHARE_KEYS:
                reply, payload = self._share_keys(req["content"], rnd)
            elif stage == MASKED:
                reply, payload = self._masked(req["content"], rnd, msg, call_next)
            elif stage == UNMASK:
                reply, payload = self._unmask(req, rnd), {}
            else:
                raise Refusal(f"unknown stage {stage!r}")
        rnd = self.state["round"]
        st = StageStatement(
            rnd["header"]["federation_id"],
            rnd["header"]["round"],
            rnd["round_id"],
            stage,
            me,
            self.kid,
            request_digest(stage, req["content"]),
            reply,
        )
        data = st.to_bytes()
        # the SecAgg+ record and nothing else: the app's FitRes fields (example count, metrics) never leave the node
        content = RecordDict(
            {RECORD: ConfigRecord({"statement": data, "signature": self.signer.sign(data), "payload": encode(payload)})}
        )
        return Message(content, reply_to=msg)

    # -- stage 0 ------------------------------------------------------------------------------------
    def _setup(self, req: dict[str, Any], me: str) -> dict[str, Any]:
        header, proof = req["content"].get("header"), req["proof"]
        problem = checks.header_problem(header, me)
        if problem:
            raise Refusal(f"round header: {problem}")
        if header["generator"] in WEAK_GENERATORS and not self.allow_weak:
            raise Refusal(f"the round uses the weak mask generator {header['generator']}")
        fid = header["federation_id"]
        pin = self.state["pins"].get(fid)
        server = self.server_key or (pin["server_key"] if pin else proof.get("server_key"))
        if not isinstance(server, bytes):
            raise Refusal("no server key to verify the checkpoint with")
        last = (pin["size"], pin["root"]) if pin else None
        proofs = proof.get("consistency") if isinstance(proof.get("consistency"), dict) else {}
        cp, problem = checks.checkpoint_problem(
            proof.get("checkpoint"),
            server,
            fid,
            last,
            proofs.get(str(last[0])) if last else b"",
            self.witnesses,
            self.quorum,
            proof=proof,
            head_required=bool(pin and pin.get("named")),  # once a checkpoint named its head, every one must
        )
        if problem:
            raise Refusal(problem)
        named = cp.named or bool(pin and pin.get("named"))
        self.state["pins"][fid] = {"server_key": server, "size": cp.size, "root": cp.root, "named": named}
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.state["round"] = {
            "header": header,
            "round_id": req["round_id"],
            "node_id": me,
            "stage": SETUP,
            "sk1": private_key_to_bytes(sk1),
            "pk1": public_key_to_bytes(pk1),
            "sk2": private_key_to_bytes(sk2),
            "pk2": public_key_to_bytes(pk2),
            "cp_size": cp.size,
            "cp_root": cp.root,
            "head_named": named,
            "server_key": server,
            "seed": b"",
            "seed_shares": {},
            "key_shares": {},
            "ss2": {},
            "pks": {},
            "masked_digest": b"",
        }
        return {"pk1": self.state["round"]["pk1"], "pk2": self.state["round"]["pk2"]}

    # -- stage 1 ------------------------------------------------------------------------------------
    def _share_keys(self, content: dict[str, Any], rnd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        keys, me, header = content.get("keys"), rnd["node_id"], rnd["header"]
        problem = checks.share_keys_problem(keys, rnd)
        if problem:
            raise Refusal(problem)
        t, order = header["params"]["threshold"], sorted(keys, key=int)
        sk1, sk2 = bytes_to_private_key(rnd["sk1"]), bytes_to_private_key(rnd["sk2"])
        for nid in order:  # every key is used now as it will be: one that does not parse is a refusal, not a crash
            if nid != me:
                _agree(sk1, keys[nid][0], f"the public key pk1 of node {nid}")
                rnd["ss2"][nid] = _agree(sk2, keys[nid][1], f"the public key pk2 of node {nid}")
        rnd["seed"] = os.urandom(32)
        seed_shares = create_shares(rnd["seed"], t, len(order))
        key_shares = create_shares(rnd["sk1"], t, len(order))
        sent, cts, commits = {}, {}, {}
        for i, nid in enumerate(order):
            rnd["pks"][nid] = keys[nid]
            commits[nid] = [share_digest(seed_shares[i]), share_digest(key_shares[i])]  # checked at unmask
            if nid == me:
                rnd["seed_shares"][me], rnd["key_shares"][me] = seed_shares[i], key_shares[i]
                continue
            plain = share_keys_plaintext_concat(int(me), int(nid), seed_shares[i], key_shares[i])
            ct = encrypt(rnd["ss2"][nid], plain)
            cts[nid], sent[nid] = ct, hashlib.sha256(ct).digest()
        return {"sent": sent, "shares": commits}, {"ciphertexts": cts}

    # -- stage 2 ------------------------------------------------------------------------------------
    def _masked(
        self, content: dict[str, Any], rnd: dict[str, Any], msg: Message, call_next: ClientAppCallable
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the app's fit and mask its update; only the masked vector leaves (no count, no metrics)."""
        cts, commits, me, p = content.get("ciphertexts"), content.get("shares"), rnd["node_id"], rnd["header"]["params"]
        if not isinstance(cts, dict) or not isinstance(commits, dict):
            raise Refusal("the masked-input request carries no ciphertexts and share commitments")
        sources = []
        for src, ct in sorted(cts.items(), key=lambda t: _id_key(t[0])):
            if src not in rnd["ss2"] or not isinstance(ct, bytes):
                continue  # never told this node's keys: no share, no pairwise mask
            try:
                real_src, dst, seed_share, key_share = share_keys_plaintext_separate(decrypt(rnd["ss2"][src], ct))
            except Exception:  # noqa: BLE001, S112 - a ciphertext that does not open is no share
                continue
            shares = [share_digest(seed_share), share_digest(key_share)]  # at unmask, it is never framed:
            if (str(real_src), str(dst)) != (src, me) or commits.get(src) != shares:  # not the committed ones
                continue
            rnd["seed_shares"][src], rnd["key_shares"][src] = seed_share, key_share
            sources.append(src)
        if len(sources) + 1 < p["threshold"]:
            raise Refusal("fewer neighbour shares than the threshold")
        version = header_digest_version(rnd["header"])  # the ledger's: every digest it holds or compares uses it
        problem = checks.base_problem(
            msg.content.array_records.get("fitins.parameters"), rnd["header"]["base_digest"], version
        )
        if problem:
            raise Refusal(problem)
        inner = RecordDict({k: v for k, v in msg.content.items() if k != RECORD})
        out = call_next(_with(msg, inner), self.context)
        fitres = compat.recorddict_to_fitres(out.content, keep_input=True)
        if problem := checks.weight_problem(fitres.num_examples, rnd["header"]):  # its weight must not wrap the sum
            raise Refusal(problem)
        vector = mask_input(rnd, fitres.num_examples, parameters_to_ndarrays(fitres.parameters), sources)
        named = [(str(i), a.astype(np.uint32)) for i, a in enumerate(vector)]  # mod_range <= 2**32: 4 bytes each
        rnd["masked_digest"], rnd["sources"] = array_digest(named, version), sources
        reply = {
            "digest": rnd["masked_digest"],
            "weight": int(vector[0].reshape(-1)[0]),
            "sources": sources,
            "seed_digest": seed_digest(rnd["seed"]),
            "base_digest": rnd["header"]["base_digest"],  # the model it checked it was sent and trained on
        }
        return reply, {"vector": encode_arrays(named, version)}

    # -- stage 3 ------------------------------------------------------------------------------------
    def _unmask(self, req: dict[str, Any], rnd: dict[str, Any]) -> dict[str, Any]:
        c = req["content"]
        active, dead = c.get("active"), c.get("dead")
        reply = {
            "active": active if isinstance(active, list) else [],
            "dead": dead if isinstance(dead, list) else [],
            "checkpoint_size": -1,
            "checkpoint_root": b"",
            "seed_shares": {},
            "key_shares": {},
            "refused": "",
        }
        if not (isinstance(active, list) and isinstance(dead, list)) or not all(
            isinstance(x, str) and is_decimal(x) for x in active + dead
        ):
            reply["active"], reply["dead"] = [], []
            reply["refused"] = "the unmask request's active/dead lists are not lists of node ids"
            return reply  # signed: the refusal is this node's evidence against the server
        commit, cp, problem = checks.committed_lists(req["proof"], rnd["server_key"], rnd, self.witnesses, self.quorum)
        if cp is not None:
            reply["checkpoint_size"], reply["checkpoint_root"] = cp.size, cp.root
        if problem is None and c.get("log_size") != (cp[0] if cp else None):
            problem = "the request names another log size than the checkpoint it proves"
        if problem is None:
            problem = checks.unmask_problem(commit, active, dead, rnd)
        if problem is not None:
            log.error(
                "flower-chain SecAgg+: node %s reveals nothing in round %s: %s",
                rnd["node_id"],
                rnd["header"]["round"],
                problem,
            )
            reply["refused"] = problem
            return reply
        fid = rnd["header"]["federation_id"]
        named = cp.named or rnd.get("head_named", False)
        self.state["pins"][fid] = {"server_key": rnd["server_key"], "size": cp.size, "root": cp.root, "named": named}
        reply["seed_shares"] = {nid: rnd["seed_shares"][nid] for nid in active}
        reply["key_shares"] = {nid: rnd["key_shares"][nid] for nid in dead}
        return reply


def _id_key(node_id: Any) -> tuple[int, str]:
    """A total sort key for node ids from a request: numeric order for decimal text, anything else first."""
    return (len(node_id), node_id) if isinstance(node_id, str) and is_decimal(node_id) else (-1, "")


def _agree(sk: Any, raw: bytes, what: str) -> bytes:
    """ECDH + HKDF with a neighbour's public key (Flower's calls); a key that does not parse is a refusal."""
    try:
        return generate_shared_key(sk, bytes_to_public_key(raw))
    except Exception as e:  # noqa: BLE001 - a hostile key is the server's doing: named, never a crash
        raise Refusal(f"{what} does not parse as a public key ({type(e).__name__})") from e


def _with(msg: Message, content: RecordDict) -> Message:
    """The instruction with ``content`` (the SecAgg+ record removed) for the app's own train function."""
    md = msg.metadata
    meta = Metadata(
        run_id=md.run_id,
        message_id=md.message_id,
        src_node_id=md.src_node_id,
        dst_node_id=md.dst_node_id,
        reply_to_message_id=md.reply_to_message_id,
        group_id=md.group_id,
        created_at=md.created_at,
        ttl=md.ttl,
        message_type=md.message_type,
    )
    return Message(content=content, metadata=meta)


#: The mod for ``ClientApp(client_fn=..., mods=[signing_mod, secagg_mod])``: each node's signing key.
secagg_mod = make_secagg_mod()
