"""A SecAgg+ node checks the checkpoint's ``flower-chain/head`` line (docs/ledger-format.md §5.1) against the
signed block header it is sent with it, at stage 0 and with the commitment at stage 3: a head re-signed under
the same log (another ``model_after``), a checkpoint without the line once one had it, or no header at all is
refused, naming both block hashes; nothing is revealed. An honest run passes these checks (test_secagg_round)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flower_chain.clients.secagg import RECORD
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.secagg import StageStatement
from flower_chain.ledger.writer import origin_for
from tests.support.fl_helpers import with_content
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def edit_proof(stage: str, edit):
    """A dishonest server's rewrite: ``edit(proof, fed)`` changes the proof of every ``stage`` instruction."""

    def rewrite(nid, st, msg: Message) -> Message:
        if st != stage:
            return msg
        req = decode(msg.content.config_records[RECORD]["request"])
        edit(req["proof"])
        content = RecordDict(dict(msg.content.items()))
        content.config_records[RECORD] = ConfigRecord({"request": encode(req)})
        return with_content(msg, content)

    return rewrite


def resigned_head(fed: SecAggFederation):
    """Edit: the head header re-signed by the server key with another ``model_after`` (same height, log)."""

    def edit(proof):
        header = BlockHeader.from_bytes(proof["head"])
        other = dataclasses.replace(header, model_after=hashlib.sha256(b"another model").digest()).to_bytes()
        proof["head"], proof["head_signature"] = other, fed.server_key.sign(other)

    return edit


def unnamed_checkpoint(fed: SecAggFederation):
    """Edit: the checkpoint re-signed by the server key without its head line (same size and root)."""

    def edit(proof):
        cp = verify_checkpoint(proof["checkpoint"], fed.server_key.public_key())
        proof["checkpoint"] = sign_checkpoint(
            Checkpoint(origin_for("fed-secagg"), cp.size, cp.root_hash), fed.server_key
        )

    return edit


def no_header(fed: SecAggFederation):
    def edit(proof):
        del proof["head"]

    return edit


def refusals(fed: SecAggFederation, stage: str) -> list[str]:
    return [str(e) for _, st, e in fed.grid.errors if st == stage]


@pytest.mark.parametrize("attack", [resigned_head, no_header])
def test_at_setup_a_head_other_than_the_checkpoint_names_is_refused(attack):
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    head = fed.ledger.head()
    fed.grid.rewrite = edit_proof("setup", attack(fed))
    figures = fed.run_round(1)
    assert figures.get("setup", 0) == 0 and len(refusals(fed, "setup")) == 4, (figures, fed.grid.errors)
    why = refusals(fed, "setup")[0]
    if attack is resigned_head:  # both hashes named: the one the checkpoint names and the one sent
        assert head.hash.hex() in why and "the server sent the signed header of block" in why, why
    else:
        assert "no block header signed by the server key" in why, why


def test_a_checkpoint_without_the_head_line_after_one_with_it_is_refused():
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    assert fed.run_round(1)["failure"] == ""  # every node saw checkpoints naming their head
    fed.grid.rewrite = edit_proof("setup", unnamed_checkpoint(fed))
    figures = fed.run_round(2)
    assert figures.get("setup", 0) == 0, figures
    why = refusals(fed, "setup")
    assert len(why) == 4 and all("checkpoint names no block" in w for w in why), why


def test_a_checkpoint_without_the_head_line_is_taken_from_a_node_that_never_saw_one():
    """Ledgers from before §5.1: nothing to bind, the round completes."""
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    fed.grid.rewrite = edit_proof("setup", unnamed_checkpoint(fed))
    assert fed.run_round(1)["failure"] == "", fed.grid.errors


@pytest.mark.parametrize("attack", [resigned_head, unnamed_checkpoint, no_header])
def test_at_unmask_a_commit_checkpoint_whose_head_is_not_the_header_sent_reveals_nothing(attack):
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    replies: dict = {}

    def tamper(nid, stage, msg, reply):
        if stage == "unmask" and not reply.has_error():
            replies[nid] = StageStatement.from_bytes(reply.content.config_records[RECORD]["statement"]).reply
        return reply

    fed.grid.rewrite, fed.grid.tamper = edit_proof("unmask", attack(fed)), tamper
    figures = fed.run_round(1)
    assert figures["failure"], figures
    assert len(replies) == 4 and all(r["refused"] for r in replies.values()), replies
    assert not any(r["seed_shares"] or r["key_shares"] for r in replies.values())
    want = {resigned_head: "the server sent the signed header", unnamed_checkpoint: "checkpoint names no block"}
    want[no_header] = "no block header signed by the server key"
    assert all(want[attack] in r["refused"] for r in replies.values()), replies


def test_head_problem_refuses_a_header_not_signed_by_the_server_or_not_the_checkpointed_head():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.clients.secagg_checks import head_problem
    from flower_chain.ledger.keys import raw_public

    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    head, key = fed.ledger.head(), raw_public(fed.server_key)
    cp = verify_checkpoint(head.checkpoint, key)
    proof = {"head": head.header_bytes, "head_signature": head.signature}
    assert head_problem(cp, proof, key, "fed-secagg", required=False) == (True, None)
    forged = {**proof, "head_signature": Ed25519PrivateKey.generate().sign(head.header_bytes)}
    assert "signed by the server key" in head_problem(cp, forged, key, "fed-secagg", required=False)[1]
    assert "not the head of this federation" in head_problem(cp, proof, key, "another-fed", required=False)[1]
    other = dataclasses.replace(BlockHeader.from_bytes(head.header_bytes), log_size=cp.size + 1).to_bytes()
    moved = {"head": other, "head_signature": fed.server_key.sign(other)}
    assert "not the head of this federation" in head_problem(cp, moved, key, "fed-secagg", required=False)[1]
    junk = {"head": b"junk", "head_signature": fed.server_key.sign(b"junk")}
    assert "does not decode" in head_problem(cp, junk, key, "fed-secagg", required=False)[1]


def _restart_nodes(fed: SecAggFederation, receipts) -> None:
    """Every SuperNode restarts: a fresh Context (Flower keeps node state in memory, per run series)."""
    from flwr.app import Context

    for nid in fed.grid.contexts:
        node_config = {"receipts-dir": str(receipts)}
        fed.grid.contexts[nid] = Context(
            run_id=2, node_id=nid, node_config=node_config, state=RecordDict(), run_config={}
        )


def test_a_restarted_node_still_requires_the_head_line_it_saw_and_its_pins(tmp_path):
    """Review 2 (R2-6): what a node saw of a log is kept on disk beside its receipts, so a restart does not
    let a server drop the head line (or show a log that does not extend the one seen)."""
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    for ctx in fed.grid.contexts.values():
        ctx.node_config["receipts-dir"] = str(tmp_path)
    assert fed.run_round(1)["failure"] == ""
    assert len(list(tmp_path.glob("*/secagg-pins.ce1"))) == 4  # one per node key
    _restart_nodes(fed, tmp_path)
    fed.grid.rewrite = edit_proof("setup", unnamed_checkpoint(fed))
    figures = fed.run_round(2)
    assert figures.get("setup", 0) == 0, figures
    why = refusals(fed, "setup")
    assert len(why) == 4 and all("checkpoint names no block" in w for w in why), why


def test_a_damaged_pins_file_is_refused_not_taken_as_nothing_seen(tmp_path):
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    for ctx in fed.grid.contexts.values():
        ctx.node_config["receipts-dir"] = str(tmp_path)
    assert fed.run_round(1)["failure"] == ""
    for pins in tmp_path.glob("*/secagg-pins.ce1"):
        pins.write_bytes(b"\x00garbage")
    _restart_nodes(fed, tmp_path)
    fed.run_round(2)
    why = refusals(fed, "setup")
    assert len(why) == 4 and all("pins file" in w and "cannot be read" in w for w in why), why
    assert all(p.read_bytes() == b"\x00garbage" for p in tmp_path.glob("*/secagg-pins.ce1"))  # left for the operator
