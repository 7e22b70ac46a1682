"""With a witness quorum on every checkpoint, a forked live/dropped commitment is prevented, not just detected:
the witness cosigns one history only, so the fork's checkpoint never reaches the quorum and no node told the
fork's story reveals anything."""

from __future__ import annotations

import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.audit.secagg import audit_secagg
from flower_chain.ledger import open_ledger, proofs
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key
from flower_chain.ledger.cosignature import parse_cosigner_key
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.secagg import SecAggEntry
from flower_chain.ledger.writer import LedgerWriter, origin_for
from flower_chain.serve.background import ServerThread
from flower_chain.witness.client import WitnessEndpoint, WitnessPool
from flower_chain.witness.server import Witness, WitnessStore
from flower_chain.witness.server import build_app as witness_app
from tests.adversarial.test_secagg_dishonest_server import (
    request_of,
    unmask_replies,
    with_request,
)
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def test_fork_of_the_commitment_cannot_reach_the_witness_quorum(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    origin = origin_for("fed-secagg")
    witness = Witness(
        "witness.test/w1",
        Ed25519PrivateKey.generate(),
        {origin: [parse_verifier_key(verifier_key(origin, server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    vkey = witness.verifier_key
    db = tmp_path / "ledger.db"
    with ServerThread(witness_app(witness)) as url:
        fed = SecAggFederation(
            f"sqlite:///{db}",
            n=6,
            server_key=server_key,
            strategy_kw={"witnesses": [(url, vkey)], "witness_quorum": 1, "witness_timeout": 5},
            client_kw={"witness_keys": vkey, "witness_quorum": 1},
        )
        assert fed.run_round(1)["failure"] == ""  # honest round: every checkpoint cosigned, every node takes part
        state: dict = {}

        def rewrite(nid, stage, msg):
            if stage == "masked-input" and "fork" not in state:
                src, dst = sqlite3.connect(db), sqlite3.connect(tmp_path / "fork.db")
                src.backup(dst)
                src.close(), dst.close()
                state["fork"] = open_ledger(f"sqlite:///{tmp_path}/fork.db")
            if stage != "unmask" or "teller" in state:
                return msg
            req = request_of(msg)
            victim = next(m for m in req["content"]["active"] if m != str(nid))
            commit = decode_entry(req["proof"]["entry"])
            data = dict(commit.data)
            data["live"] = [m for m in data["live"] if m != victim]
            data["dropped"] = sorted(data["dropped"] + [victim], key=int)
            data["masked"] = {k: v for k, v in data["masked"].items() if k != victim}
            data["statements"] = {k: v for k, v in data["statements"].items() if k != victim}
            forked = SecAggEntry(**{**commit.__dict__, "data": data})
            main = fed.ledger
            start = main.block(main.block_count() - 1).header.first_index
            others = list(main.entries(start, req["proof"]["index"]))
            fork = state["fork"]
            seen = fork.log_size()
            base = main.block(main.block_count() - 1).header.model_before
            block = LedgerWriter(fork, server_key).append(
                2, others + [forked.to_bytes()], model_before=base, model_after=base
            )
            # the dishonest server asks the witness to cosign its fork: refused (it cosigned the real log)
            pool = WitnessPool([WitnessEndpoint(url, parse_cosigner_key(vkey))], timeout=5)
            note, errors = pool.cosign(fork, block.checkpoint)
            state["witness_errors"] = errors
            index, size = block.header.first_index + len(others), block.header.log_size
            c = req["content"]
            c["active"] = [m for m in c["active"] if m != victim]
            c["dead"] = sorted(c["dead"] + [victim])
            c["commit_index"], c["log_size"] = index, size
            req["proof"] = {
                "checkpoint": note,
                "entry": forked.to_bytes(),
                "index": index,
                "inclusion": b"".join(proofs.inclusion_proof(fork, index, size)),
                "consistency": b"".join(proofs.consistency_proof(fork, seen, size)),
                "genesis": req["proof"]["genesis"],
                "genesis_inclusion": b"".join(proofs.inclusion_proof(fork, 0, size)),
            }
            state.update(teller=str(nid), victim=victim)
            return with_request(msg, req)

        replies: dict = {}
        fed.grid.rewrite, fed.grid.tamper = rewrite, unmask_replies(replies)
        fed.run_round(2)
    assert state["witness_errors"], "the witness cosigned the fork"
    told = replies[int(state["teller"])]
    assert told["refused"] and "cosignature" in told["refused"]
    assert not told["key_shares"] and not told["seed_shares"]  # prevented: the fork's story revealed nothing
    keys = {o for r in replies.values() for o in r["key_shares"]}
    assert state["victim"] not in keys
    report = audit_secagg(fed.ledger)
    assert any(f.round == 2 and f.stage == "unmask" and f.node == state["teller"] for f in report.findings)
