"""A dishonest server: it rewrites its own ledger and re-signs every header and checkpoint with its own key.

Each case starts from an honest ledger that verifies (``ledger verify`` and ``ledger audit`` exit 0), rewrites it
with :mod:`tests.support.dishonest` the way a server that breaks one rule would, and runs the CLI as an auditor does. The
rewrite is re-signed, so the checks that trust the server (hash chain, Merkle roots, header signatures, signed
checkpoints, entry structure) still pass — ``ledger verify --no-client-signatures`` exits 0 — and only the checks
that do not trust it catch the lie: the verdict re-derivation of ``ledger verify`` (exit 1 naming the block, the
entry and the rule), the aggregation replay of ``ledger audit`` (exit 1 naming the round and the block), and the
anchors (exit 1 naming the first height the chain has seen beyond the local head).

The ledgers are synthetic (no Flower simulation, no torch): :class:`tests.conftest.Federation` for the verdict
rules, :class:`~flower_chain.strategies.LedgerStrategy` driven in-process with numpy arrays for the replay.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.ledger.entries import UpdateEntry, UpdateStatement, metrics_digest
from flower_chain.ledger.keys import key_id
from tests.conftest import Federation
from tests.support import dishonest

HEAD = 5  # the last block of the synthetic ledger (round 4); most rewrites edit it so no later block hides them


def cli(*args: str):
    """``flower-chain ARGS`` in-process, as a user runs it: (exit code, stdout and stderr, stdout alone)."""
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output, r.stdout


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- the honest ledger ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """An honest synthetic ledger, checked to verify, and a copy re-signed unchanged that verifies too.

    Blocks: 0 genesis (clients 0-5); 1, 2 rounds 1-2 (clients 0-2 accepted, client 3 ``bad-signature``);
    3 revokes client 4; 4 round 3 (clients 0-2 accepted, client 4 ``revoked-key``); 5 round 4 (clients 0-2
    accepted at entries 0-2, client 3 ``bad-signature`` at entry 3). Client 5 is in the keyring and silent.
    """
    d = tmp_path_factory.mktemp("dishonest")
    f = Federation(f"sqlite:///{d}/honest.db", n_clients=6, federation_id="fed-d")
    f.add_round(1, n=3, rejected=1)
    f.add_round(2, n=3, rejected=1)
    f.writer.revoke(key_id(f.client_keys[4]), "laptop lost")
    before = f.writer.head.header.model_after
    f.writer.append(
        3,
        [f.update(3, i, base=before) for i in range(3)]
        + [f.update(3, 4, verdict="rejected", reason="revoked-key", base=before)],
        model_before=before,
        model_after=f.rng.randbytes(32),
    )
    f.add_round(4, n=3, rejected=1)
    f.ledger.close()
    path = d / "honest.db"
    for cmd, want in (("verify", 0), ("audit", 3)):  # audit: NOT AUDITED, the synthetic writer stores no
        code, out, _ = cli("ledger", cmd, f"sqlite:///{path}")  # strategy settings nor updates to replay
        assert code == want, out
    code, out, _ = cli("ledger", "verify", f"sqlite:///{path}")
    assert "train verdicts: ok 12, bad-signature 3, revoked-key 1" in out, out
    assert "verdicts re-derived from the ledger: 16" in out, out  # every update verdict of rounds 1-4
    # ... but only the accepted ones are proven by the clients' signatures; the rejections rest on what the
    # server recorded (a signature it could have damaged, a revocation it signed itself)
    assert "proven by client signatures: 12 (accepted 12, rejected 0)" in out, out
    assert "rejected on evidence only the server recorded: bad-signature 3, revoked-key 1" in out, out
    resigned = d / "resigned.db"
    shutil.copy(path, resigned)
    dishonest.rewrite(resigned, f.server_key, lambda blocks: None)  # re-signing alone changes nothing
    code, out, _ = cli("ledger", "verify", f"sqlite:///{resigned}")
    assert code == 0 and "VERIFIED" in out, out
    return path, f


def rewritten(honest, tmp_path, edit) -> str:
    """A copy of the honest ledger rewritten with ``edit(federation, blocks)`` and re-signed; its URI."""
    path, f = honest
    copy = tmp_path / "dishonest.db"
    shutil.copy(path, copy)
    dishonest.rewrite(copy, f.server_key, lambda blocks: edit(f, blocks))
    return f"sqlite:///{copy}"


def signed(f: Federation, key: Ed25519PrivateKey, blocks, *, rnd: int = 4, kind: str = "train", **statement):
    """An update that ``key`` really signed, recorded as accepted in round ``rnd`` (block ``HEAD``).

    The statement is the one an honest reply to round 4 carries (parent: block 5's ``prev_hash``, base: its
    ``model_before``) unless ``statement`` overrides a field (``kind``, ``federation_id``, ``round``, ``parent``,
    ``base_digest``).
    """
    fields, _ = blocks[HEAD]
    digest, metrics, n = f.rng.randbytes(32), {"train_loss": 0.5}, 42
    st = UpdateStatement(
        **{
            "kind": kind,
            "federation_id": f.federation_id,
            "round": rnd,
            "key_id": key_id(key),
            "parent": fields["prev_hash"],
            "base_digest": fields["model_before"],
            "arrays_digest": digest,
            "num_examples": n,
            "metrics_digest": metrics_digest(metrics),
            **statement,
        }
    )
    sb = st.to_bytes()
    return UpdateEntry(
        kind="train",
        round=rnd,
        node_id="77",
        key_id=key_id(key),
        verdict="accepted",
        reason="ok",
        detail="",
        num_examples=n,
        arrays_digest=digest,
        metrics=metrics,
        statement=sb,
        signature=key.sign(sb),
    )


def replace(blocks, height: int, entry: int, **changes) -> None:
    blocks[height][1][entry] = dataclasses.replace(blocks[height][1][entry], **changes)


def append(blocks, entry) -> None:
    blocks[HEAD][1].append(entry)


ACCEPT = {"verdict": "accepted", "reason": "ok", "detail": ""}

# id: (edit(federation, blocks), height, entry, recorded reason, derived reason, a phrase of the policy's detail)
RULES = {
    # 4. bad-signature: an update whose signature does not verify is recorded as accepted
    "signature": (
        lambda f, b: replace(b, HEAD, 3, **ACCEPT),
        HEAD,
        3,
        "ok",
        "bad-signature",
        "the signature does not verify under the key it names",
    ),
    # 4. unknown-key: the server's sock puppet, a key that is not in the genesis keyring
    "key-unknown": (
        lambda f, b: append(b, signed(f, Ed25519PrivateKey.generate(), b)),
        HEAD,
        4,
        "ok",
        "unknown-key",
        "is not in the genesis keyring",
    ),
    # 4. revoked-key: the honest rejection of a key revoked in block 3 turned into an acceptance
    "key-revoked": (lambda f, b: replace(b, 4, 3, **ACCEPT), 4, 3, "ok", "revoked-key", "was revoked"),
    # 5. wrong-federation: client 5's statement for another federation, accepted here
    "federation": (
        lambda f, b: append(b, signed(f, f.client_keys[5], b, federation_id="fed-other")),
        HEAD,
        4,
        "ok",
        "wrong-federation",
        "statement is for federation 'fed-other'",
    ),
    # 5. wrong-round: client 0's accepted round-3 update replayed into round 4
    "round": (
        lambda f, b: append(b, dataclasses.replace(b[4][1][0], round=4)),
        HEAD,
        4,
        "ok",
        "wrong-round",
        "statement is for round 3, this is round 4",
    ),
    # 5. wrong-round (kind): an evaluate statement recorded as an accepted train update
    "kind": (
        lambda f, b: append(b, signed(f, f.client_keys[5], b, kind="evaluate")),
        HEAD,
        4,
        "ok",
        "wrong-round",
        "statement is for a evaluate reply, not train",
    ),
    # 6. stale-parent: a statement built on the head of round 3, accepted in round 4
    "parent": (
        lambda f, b: append(b, signed(f, f.client_keys[5], b, parent=b[4][0]["prev_hash"])),
        HEAD,
        4,
        "ok",
        "stale-parent",
        "names another ledger head",
    ),
    # 7. wrong-base-model: a straggler trained on round 3's global model, accepted in round 4
    "base-model": (
        lambda f, b: append(b, signed(f, f.client_keys[5], b, base_digest=b[4][0]["model_before"])),
        HEAD,
        4,
        "ok",
        "wrong-base-model",
        "trained on other arrays than this round's global model",
    ),
    # 8. digest-mismatch (arrays): the server records other arrays than the client signed
    "arrays-digest": (
        lambda f, b: replace(b, HEAD, 0, arrays_digest=b"\x42" * 32),
        HEAD,
        0,
        "ok",
        "digest-mismatch",
        "the arrays differ from the ones the client signed",
    ),
    # 8. digest-mismatch (metrics): a better loss than the client reported
    "metrics-digest": (
        lambda f, b: replace(b, HEAD, 1, metrics={"train_loss": 0.0}),
        HEAD,
        1,
        "ok",
        "digest-mismatch",
        "the metrics differ from the ones the client signed",
    ),
    # 8. num-examples-mismatch: a client's weight in the average inflated
    "counts": (
        lambda f, b: replace(b, HEAD, 2, num_examples=10_000),
        HEAD,
        2,
        "ok",
        "num-examples-mismatch",
        "signed num-examples 12, reply says 10000",
    ),
    # 11. duplicate: one accepted reply per key per round; the server counts client 1 twice
    "duplicate": (lambda f, b: append(b, b[HEAD][1][1]), HEAD, 4, "ok", "duplicate", "a second copy of"),
    # 10. equivocation: client 1's key signed a second, different statement for round 4; both accepted
    "equivocation": (
        lambda f, b: append(b, signed(f, f.client_keys[1], b)),
        HEAD,
        1,
        "ok",
        "equivocation",
        "signed 2 different statements for this round",
    ),
    # an update added from a key revoked in block 3, signed by it (a stolen key) and accepted
    "added-from-revoked-key": (
        lambda f, b: append(b, signed(f, f.client_keys[4], b)),
        HEAD,
        4,
        "ok",
        "revoked-key",
        "was revoked",
    ),
    # censorship: client 0's valid update rejected with a made-up reason
    "censored": (
        lambda f, b: replace(b, HEAD, 0, verdict="rejected", reason="bad-signature"),
        HEAD,
        0,
        "bad-signature",
        "ok",
        "all rules pass",
    ),
}


@pytest.mark.parametrize("case", list(RULES))
def test_a_rule_the_server_broke_fails_verify_and_audit_naming_block_entry_and_rule(honest, tmp_path, case):
    edit, height, entry, recorded, derived, detail = RULES[case]
    uri = rewritten(honest, tmp_path, edit)
    # re-signed: everything that trusts the server's key still checks out
    code, out, _ = cli("ledger", "verify", uri, "--no-client-signatures")
    assert code == 0 and "VERIFIED" in out, out
    where = (
        f"block {height}, entry {entry}: train update recorded as '{recorded}', but the verdict policy derives "
        f"'{derived}' from the ledger"
    )
    for cmd in ("verify", "audit"):  # audit re-derives the verdicts before it replays anything
        code, out, _ = cli("ledger", cmd, uri)
        assert code == 1, f"{cmd}: {out}"
        assert f"NOT VERIFIED {uri}: {where}" in one_line(out), f"{cmd}: {out}"
        assert detail in one_line(out), f"{cmd}: {out}"
    code, _, stdout = cli("ledger", "verify", uri, "--json")
    doc = json.loads(stdout)
    assert code == 1 and (doc["verified"], doc["height"], doc["entry"]) == (False, height, entry), doc
    assert f"derives '{derived}'" in doc["error"], doc


def test_the_installed_cli_exits_1_too(honest, tmp_path):
    """The same check through ``python -m flower_chain.cli``, the way a user's shell runs it."""
    uri = rewritten(honest, tmp_path, RULES["duplicate"][0])
    r = subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", "ledger", "verify", uri],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        f"block {HEAD}, entry 4: train update recorded as 'ok', but the verdict policy derives 'duplicate'"
        in one_line(r.stderr)
    ), r.stderr


# -- the aggregation: what only the replay of ``ledger audit`` shows -------------------------------------------


@pytest.fixture(scope="module")
def strategy_ledger(tmp_path_factory):
    """An honest 3-round FedAvg ledger written by LedgerStrategy (4 clients, every update and model stored)."""
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from flower_chain.strategies import LedgerStrategy
    from tests.support.fl_helpers import Clients, FakeGrid, arrays, signed_train_reply

    path = tmp_path_factory.mktemp("replay") / "honest.db"
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    with pytest.MonkeyPatch.context() as mp:  # what a running Flower app sets (conftest's task_identity)
        for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
            mp.setattr(TaskIdentity, name, value)
        s = LedgerStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
            ledger=f"sqlite:///{path}",
            keyring=clients.keyring,
            server_key=key,
            federation_id="fed-r",
        )
        glob = arrays(0)
        for rnd in (1, 2, 3):
            msgs = sorted(
                s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid([11, 12, 13, 14])),
                key=lambda m: m.metadata.dst_node_id,
            )
            glob, _ = s.aggregate_train(
                rnd,
                [
                    signed_train_reply(m, k, arrays(100 * rnd + i), 10 + i)
                    for i, (m, k) in enumerate(zip(msgs, clients.keys))
                ],
            )
        s.close()
    code, out, _ = cli("ledger", "audit", f"sqlite:///{path}", "--strict")
    assert code == 0 and "3 of 3 train rounds re-derived bit for bit" in one_line(out), out
    code, out, _ = cli("ledger", "verify", f"sqlite:///{path}", "--strict")
    assert code == 0, out
    return path, key, clients


def _substitute_model(clients, uri):
    from flower_chain.ledger.arrays import array_digest, encode_arrays

    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))  # the server even stores the model it claims

    def edit(blocks):
        blocks[-1][0]["model_after"] = fake  # round 3, the head

    return edit, f"model_after {fake.hex()[:16]} is not the aggregate of the 4 accepted updates"


def _drop_update(clients, uri):
    victim = key_id(clients.keys[2])

    def edit(blocks):
        blocks[-1][1][:] = [e for e in blocks[-1][1] if getattr(e, "key_id", None) != victim]

    return edit, "is not the aggregate of the 3 accepted updates"


@pytest.mark.parametrize(
    "lie", [_substitute_model, _drop_update], ids=["substituted-model-after", "dropped-accepted-update"]
)
def test_an_aggregate_the_server_did_not_compute_fails_audit_naming_round_and_block(strategy_ledger, tmp_path, lie):
    path, key, clients = strategy_ledger
    copy = tmp_path / "dishonest.db"
    shutil.copy(path, copy)
    uri = f"sqlite:///{copy}"
    edit, detail = lie(clients, uri)
    dishonest.rewrite(copy, key, edit)
    code, out, _ = cli("ledger", "verify", uri, "--strict")  # every verdict still follows from the ledger...
    assert code == 0 and "VERIFIED" in out, out
    code, out, _ = cli("ledger", "audit", uri)  # ...but the recorded model is not the round's aggregate
    assert code == 1, out
    text = one_line(out)
    assert "NOT RE-DERIVED round 3 (block 3)" in text and detail in text and "AUDIT FAILED" in text, out
    assert "round 1 (block 1)" not in text and "round 2 (block 2)" not in text, out


def _no_base_unsigned(last, fake, keys=()):
    """A round-4 train block naming no base model, holding only an unsigned rejection (nothing to re-derive)."""
    from flower_chain.ledger.entries import UpdateEntry

    e = UpdateEntry(
        kind="train",
        round=4,
        node_id="11",
        key_id="",
        verdict="rejected",
        reason="unsigned",
        detail="",
        num_examples=1,
        arrays_digest=b"",
        metrics={},
        statement=b"",
        signature=b"",
    )
    return [
        {**last, "round": 4, "model_before": b"", "model_after": fake},
        [e],
    ], "block 4: model_before is not the model_after of the previous round (the block names no base model)"


def _no_base_empty(last, fake, keys=()):
    """A round-4 block with no entries at all, naming no base model, and a made-up model."""
    return [
        {**last, "round": 4, "model_before": b"", "model_after": fake},
        [],
    ], "block 4: model_before is not the model_after of the previous round (the block names no base model)"


def _other_base_empty(last, fake, keys=()):
    """A round-4 block with no entries, starting from a model that never existed."""
    return [
        {**last, "round": 4, "model_before": fake, "model_after": fake},
        [],
    ], "block 4: model_before is not the model_after of the previous round"


def _drops_the_model(last, fake, keys=()):
    """A block that starts from the model and leaves none (the next one may then name any base)."""
    return [
        {**last, "round": 4, "model_before": last["model_after"], "model_after": b""},
        [],
    ], "block 4: the block names no model_after"


_SWAP = "block 4: the block accepts no train update but changes the model"


def _swap_empty(last, fake, keys=()):
    """The right base, no entries, another model: nothing was aggregated, yet the model changed."""
    return [{**last, "round": 4, "model_before": last["model_after"], "model_after": fake}, []], _SWAP


def _swap_evaluation(last, fake, keys=()):
    from flower_chain.ledger.entries import EvaluationEntry

    return [
        {**last, "model_before": last["model_after"], "model_after": fake},
        [EvaluationEntry(round=last["round"], source="centralized", num_replies=0, metrics={"acc": 0.9})],
    ], _SWAP


def _swap_revocation(last, fake, keys=()):
    from flower_chain.ledger.entries import RevocationEntry

    return [
        {**last, "model_before": last["model_after"], "model_after": fake},
        [RevocationEntry(key_id=keys[0], reason="lost", created_ms=1)],
    ], _SWAP


def _swap_unsigned_only(last, fake, keys=()):
    (block, entries), _ = _no_base_unsigned(last, fake)
    return [{**block, "model_before": last["model_after"]}, entries], _SWAP


def _swap_state(last, fake, keys=()):
    """The model kept, the strategy state replaced, in a block that aggregated nothing."""
    return [
        {**last, "round": 4, "model_before": last["model_after"], "state_after": fake},
        [],
    ], "block 4: the block accepts no train update but changes the strategy state"


@pytest.mark.parametrize(
    "block",
    [
        _no_base_unsigned,
        _no_base_empty,
        _other_base_empty,
        _drops_the_model,
        _swap_empty,
        _swap_evaluation,
        _swap_revocation,
        _swap_unsigned_only,
        _swap_state,
    ],
    ids=[
        "no-base-unsigned-only",
        "no-base-no-entries",
        "unknown-base",
        "drops-model",
        "swap-no-entries",
        "swap-evaluation",
        "swap-revocation",
        "swap-unsigned-only",
        "swap-state",
    ],
)
def test_a_block_outside_the_model_chain_fails_verify_and_audit(strategy_ledger, tmp_path, block):
    """Once a model exists every block starts from it and names the model it leaves, and a block that accepts
    no train update leaves model and strategy state as they were: a block with nothing to re-derive (no signed
    update) must not be a way to swap the model."""
    from flower_chain.ledger.arrays import array_digest, encode_arrays

    path, key, _clients = strategy_ledger
    copy = tmp_path / "dishonest.db"
    shutil.copy(path, copy)
    uri = f"sqlite:///{copy}"
    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))
    expected = []

    def edit(blocks):
        new, msg = block(blocks[-1][0], fake, sorted(blocks[0][1][0].client_keys))
        blocks.append(new)
        expected.append(msg)

    dishonest.rewrite(copy, key, edit)
    for cmd in ("verify", "audit"):
        code, out, err = cli("ledger", cmd, uri)
        assert code == 1, out + err
        assert expected[0] in one_line(out + err), out + err


def test_a_revocation_of_a_key_outside_the_genesis_fails_verify(honest, tmp_path):
    from flower_chain.ledger.entries import RevocationEntry

    def edit(f, blocks):
        last = blocks[-1][0]
        blocks.append([{**last}, [RevocationEntry(key_id="not-a-key", reason="x", created_ms=1)]])

    uri = rewritten(honest, tmp_path, edit)
    code, out, err = cli("ledger", "verify", uri)
    assert code == 1 and "revocation of key 'not-a-key', which is not in the genesis keyring" in one_line(out + err)


def test_a_genesis_block_naming_a_model_fails_verify(honest, tmp_path):
    def edit(f, blocks):
        blocks[0][0]["model_after"] = b"\x07" * 32

    uri = rewritten(honest, tmp_path, edit)
    code, out, err = cli("ledger", "verify", uri)
    assert code == 1 and "block 0: the genesis block names a model or a strategy state" in one_line(out + err), (
        out + err
    )


# -- anchors: a rollback below what the chain has seen -----------------------------------------------------------


def test_a_rollback_under_an_anchor_fails_verify_naming_the_height(honest, tmp_path):
    pytest.importorskip("web3")
    from flower_chain.anchor.evm import EvmAnchor
    from flower_chain.anchor.publish import catch_up
    from flower_chain.ledger import open_ledger

    _, f = honest
    uri = rewritten(honest, tmp_path, lambda f, blocks: None)
    anchor = EvmAnchor("evm+tester:", federation_id=f.federation_id, private_key="0x" + "00" * 31 + "01")
    with open_ledger(uri) as led:
        assert catch_up(led, anchor)["anchored"] == HEAD + 1
    code, out, _ = cli("ledger", "verify", uri, "--anchor", "evm+tester:", "--contract", anchor.address)
    assert code == 0 and f"{HEAD + 1} heights match" in one_line(out), out
    dishonest.rewrite(Path(uri[len("sqlite:///") :]), f.server_key, lambda blocks: blocks[:-1])  # forget round 4
    code, out, _ = cli("ledger", "verify", uri)  # on its own the shorter ledger verifies
    assert code == 0, out
    code, out, _ = cli("ledger", "verify", uri, "--anchor", "evm+tester:", "--contract", anchor.address)
    text = one_line(out)
    assert code == 1, out
    assert (
        f"block {HEAD}: contract {anchor.address}" in text
        and f"anchors height {HEAD}, beyond the local head "
        f"(height {HEAD - 1}): the ledger was truncated or rolled back after anchoring"
        in text
    ), out


def test_rejections_on_server_evidence_are_consistent_but_never_counted_as_proven(honest, tmp_path):
    """Rejections the verdict policy cannot contradict but a client's signature does not prove: a stripped
    signature (``unsigned``), a digest the server says it received (``digest-mismatch``), an old statement
    filed under this round (``wrong-round``). verify passes and prints them apart; a rejection the client's own
    signed statement supports (the same statement twice: ``duplicate``) is proven."""
    path, f = honest

    def edit(fed, blocks):
        fields, entries = blocks[HEAD]
        entries[0] = dataclasses.replace(
            entries[0], verdict="rejected", reason="unsigned", key_id="", statement=b"", signature=b""
        )
        entries[2] = dataclasses.replace(
            entries[2], verdict="rejected", reason="digest-mismatch", arrays_digest=b"\x11" * 32
        )
        entries.append(dataclasses.replace(entries[1], verdict="rejected", reason="duplicate", node_id="8"))
        late = fed.update(3, 1, base=fields["model_before"])  # client 1 signed round 3; filed under round 4
        entries.append(dataclasses.replace(late, round=4, verdict="rejected", reason="wrong-round", node_id="9"))

    uri = rewritten(honest, tmp_path, edit)
    code, out, stdout = cli("ledger", "verify", uri)
    assert code == 0 and "VERIFIED" in out, out
    text = one_line(stdout)
    assert "proven by client signatures: 11 (accepted 10, rejected 1)" in text, text
    server = "bad-signature 3, digest-mismatch 1, revoked-key 1, unsigned 1, wrong-round 1"
    assert f"rejected on evidence only the server recorded: {server}" in text, text
    code, out, _ = cli("ledger", "verify", uri, "--json")
    doc = json.loads(out)
    assert doc["rejected_on_server_evidence"] == {
        "bad-signature": 3,
        "revoked-key": 1,
        "unsigned": 1,
        "digest-mismatch": 1,
        "wrong-round": 1,
    }, doc
    assert doc["accepted_proven_by_client_signatures"] == 10 and doc["rejected_proven_by_client_signatures"] == 1
