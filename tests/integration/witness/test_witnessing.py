"""Witnessing end to end with LedgerStrategy: a split view (two forks of one ledger, same genesis and server
key) that an independent witness refuses and whose clients then refuse to sign; clients as witnesses who
detect the fork the first time the two views meet; a witness that is down or hangs never stalls a round
beyond the timeout; ``verify_witnessed`` on the honest and the forked ledger."""

from __future__ import annotations

import socket
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_chain.audit.witnessed import verify_witnessed
from flower_chain.clients.receipts import ERRORS_LOG, METRIC_ERRORS, origin_dir_name, origin_for, read_counts
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import decode_entry, merkle, open_ledger, verify
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key
from flower_chain.ledger.cosignature import (
    check_client_cosignature,
    client_cosigner,
    cosigned_address,
    parse_cosigner_key,
    stored_cosigned_note,
    verify_cosigned_checkpoint,
)
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.serve.background import ServerThread, free_port
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.witnessing import Witnessing
from flower_chain.wire import COSIGNATURE, CTX_CHECKPOINT, LEGACY_COSIGNATURE, SIG_RECORD
from flower_chain.witness.server import Witness, WitnessStore
from flower_chain.witness.server import build_app as witness_app
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, train_reply, with_content

pytestmark = pytest.mark.usefixtures("task_identity")

FED = "fed-w"
ORIGIN = origin_for(FED)
NODES = [201, 202, 203]


def make_witness(tmp_path, server_key, name="witness.test/w1"):
    logs = {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, server_key.public_key()))]}
    return Witness(name, Ed25519PrivateKey.generate(), logs, WitnessStore(tmp_path / f"{name.replace('/', '_')}.db"))


def ctx(node_id, **node_config):
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": 0, "num-partitions": 10, **node_config},
        state=RecordDict(),
        run_config={},
    )


class Side:
    """One view of the federation: a LedgerStrategy on one ledger and the clients it serves."""

    def __init__(self, strategy, keys, mods, node_configs):
        self.strategy, self.keys, self.mods, self.node_configs = strategy, keys, mods, node_configs
        self.global_arrays = arrays(0)
        self.replies = {}
        self.sent = {}

    def round(self, rnd, nodes=NODES):
        msgs = sorted(
            self.strategy.configure_train(rnd, self.global_arrays, ConfigRecord({}), FakeGrid(nodes)),
            key=lambda m: m.metadata.dst_node_id,
        )
        self.sent[rnd] = [str(m.content["config"][CTX_CHECKPOINT]) for m in msgs]
        replies = [
            mod(m, ctx(nodes[i], **cfg), lambda msg, c, i=i: train_reply(msg, arrays(100 * rnd + i), 10))
            for i, (m, mod, cfg) in enumerate(zip(msgs, self.mods, self.node_configs))
        ]
        self.replies[rnd] = replies
        agg, _ = self.strategy.aggregate_train(rnd, replies)
        if agg is not None:
            self.global_arrays = agg
        return replies

    def verdicts(self):
        h = self.strategy.ledger.head().header
        entries = [decode_entry(e) for e in self.strategy.ledger.entries(h.first_index, h.log_size)]
        return [e.reason for e in entries if e.TYPE == "update"]

    def cosignatures(self):
        h = self.strategy.ledger.head().header
        entries = [decode_entry(e) for e in self.strategy.ledger.entries(h.first_index, h.log_size)]
        return [e for e in entries if e.TYPE == "cosignature"]


def fork_of(a: LedgerStrategy, path) -> str:
    """A second ledger with the very same genesis block as ``a``'s (what an equivocating server keeps)."""
    genesis, g_entry = next(a.ledger.blocks(0, 1)), next(a.ledger.entries(0, 1))
    uri = f"sqlite:///{path}"
    b = open_ledger(uri, create=True)
    b.append(genesis, [g_entry], [(0, 0, merkle.leaf_hash(g_entry))])
    b.close()
    return uri


def counts(receipts, key):
    return read_counts(receipts / key_id(key), FED)


def errors_log(receipts, key):
    p = receipts / key_id(key) / origin_dir_name(ORIGIN) / ERRORS_LOG
    return p.read_text() if p.exists() else ""


# --- an independent witness stops a split view ------------------------------------------------------------------


def test_split_view_the_witness_refuses_fork_b_and_its_clients_refuse_to_sign(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(6)
    witness = make_witness(tmp_path, server_key)
    vkey = witness.verifier_key
    receipts = tmp_path / "receipts"
    with ServerThread(witness_app(witness)) as url:
        wit = [(url, vkey)]
        a = LedgerStrategy(
            fedavg(),
            ledger=f"sqlite:///{tmp_path / 'a.db'}",
            keyring=clients.keyring,
            server_key=server_key,
            federation_id=FED,
            witnesses=wit,
            witness_quorum=1,
        )
        b = LedgerStrategy(
            fedavg(),
            ledger=fork_of(a, tmp_path / "b.db"),
            keyring=clients.keyring,
            server_key=server_key,
            federation_id=FED,
            witnesses=wit,
            witness_quorum=1,
            min_accepted=0,
        )  # the fork's server keeps going with no accepted update, to show it
        try:
            # every client trusts the witness, quorum 1, configured through its node config (group B)
            # or make_signing_mod's arguments (group A)
            side_a = Side(
                a,
                clients.keys[:3],
                [
                    make_signing_mod(k, receipts_dir=receipts, witness_keys=vkey, witness_quorum=1)
                    for k in clients.keys[:3]
                ],
                [{}] * 3,
            )
            cfg_b = {"receipts-dir": str(receipts), "witness-keys": vkey, "witness-quorum": 1}
            side_b = Side(b, clients.keys[3:], [make_signing_mod(k) for k in clients.keys[3:]], [cfg_b] * 3)

            side_a.round(1)
            side_b.round(1)  # both were sent the (common) cosigned genesis checkpoint
            assert side_b.verdicts() == ["ok"] * 3
            # fork B's round-1 block: the witness already cosigned A's (another root at that size)
            assert a.core.witnessing.shortfall == []
            short = b.core.witnessing.shortfall
            assert len(short) == 1 and short[0].cosignatures == 0 and short[0].height == 1
            assert url in short[0].errors and ("409" in short[0].errors[url] or "422" in short[0].errors[url])
            assert stored_cosigned_note(b.ledger, b.ledger.head()) is None
            assert stored_cosigned_note(a.ledger, a.ledger.head()) is not None

            side_a.round(2)
            side_b.round(2)
            # A's clients: cosigned checkpoints, signed replies, no error
            assert side_a.verdicts() == ["ok"] * 3
            for k in side_a.keys:
                assert counts(receipts, k) == {"receipts": 1, "errors": 0}, errors_log(receipts, k)
            pub = raw_public(server_key)
            for note in side_a.sent[2]:
                verify_cosigned_checkpoint(note, pub, [parse_cosigner_key(vkey)], 1, origin=ORIGIN)
            # B's clients refused to sign for the unwitnessed checkpoint: recorded unsigned, alarm raised
            assert side_b.verdicts() == ["unsigned"] * 3
            for k, reply in zip(side_b.keys, side_b.replies[2]):
                assert SIG_RECORD not in reply.content
                assert counts(receipts, k)["errors"] == 1
                assert "UNWITNESSED" in errors_log(receipts, k)
            # and keep refusing (the alarm grows) while the fork lasts
            side_b.round(3)
            assert side_b.verdicts() == ["unsigned"] * 3
            assert all(counts(receipts, k)["errors"] == 2 for k in side_b.keys)
            assert [s.height for s in b.core.witnessing.shortfall] == [1, 2, 3]

            # ledger verify --witness: the honest ledger passes, the fork does not
            rep_a = verify_witnessed(a.ledger, [vkey], 1)
            assert rep_a.ok and rep_a.witnessed == [0, 1, 2] and rep_a.uncovered == [], rep_a.summary()
            rep_b = verify_witnessed(b.ledger, [vkey], 1)
            assert not rep_b.ok and rep_b.uncovered == [1, 2, 3] and rep_b.witnessed == [0]
            assert "NOT witnessed" in rep_b.summary()
            # another witness key (one the operator controls) proves nothing
            other = make_witness(tmp_path, server_key, "witness.test/other").verifier_key
            assert not verify_witnessed(a.ledger, [other], 1).ok
            # the same through the CLI an auditor runs: exit 0 for A, 1 for the fork
            from typer.testing import CliRunner

            from flower_chain.cli import app as cli

            run = CliRunner().invoke
            ok = run(cli, ["ledger", "verify", f"sqlite:///{tmp_path / 'a.db'}", "--witness", vkey])
            assert ok.exit_code == 0 and "witnesses:" in ok.output, ok.output
            bad = run(cli, ["ledger", "verify", str(b.ledger.uri), "--witness", vkey, "--witness-quorum", "1"])
            assert bad.exit_code == 1 and "NOT witnessed" in bad.output, bad.output
            usage = run(cli, ["ledger", "verify", f"sqlite:///{tmp_path / 'a.db'}", "--witness-quorum", "1"])
            assert usage.exit_code == 2
        finally:
            a.core.close()
            b.core.close()


def test_copied_cosignatures_do_not_witness_a_fork(tmp_path):
    """The equivocating server copies A's stored cosigned notes into B's blob store: verify fails."""
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(3)
    witness = make_witness(tmp_path, server_key)
    with ServerThread(witness_app(witness)) as url:
        a = LedgerStrategy(
            fedavg(),
            ledger=f"sqlite:///{tmp_path / 'a.db'}",
            keyring=clients.keyring,
            server_key=server_key,
            federation_id=FED,
            witnesses=[(url, witness.verifier_key)],
            witness_quorum=1,
            witness_timeout=5,
        )
        b = LedgerStrategy(
            fedavg(),
            ledger=fork_of(a, tmp_path / "b.db"),
            keyring=clients.keyring,
            server_key=server_key,
            federation_id=FED,
        )
        try:
            sa = Side(a, clients.keys, [make_signing_mod(k) for k in clients.keys], [{}] * 3)
            sb = Side(b, clients.keys, [make_signing_mod(k) for k in clients.keys], [{}] * 3)
            for rnd in (1, 2):
                sa.round(rnd)
                sb.round(rnd, nodes=[301, 302, 303])
            a1, a2 = next(a.ledger.blocks(1, 2)), next(a.ledger.blocks(2, 3))
            b1, b2 = next(b.ledger.blocks(1, 2)), next(b.ledger.blocks(2, 3))
            assert (a1.header.log_size, a2.header.log_size) == (b1.header.log_size, b2.header.log_size)
            note_a1, note_a2 = stored_cosigned_note(a.ledger, a1), stored_cosigned_note(a.ledger, a2)
            # block 1: A's whole cosigned note (another checkpoint); block 2: A's cosignature lines on B's body
            b.ledger.put_blob(note_a1.encode(), cosigned_address(b1.hash))
            b.ledger.put_blob((b2.checkpoint + note_a2[len(a2.checkpoint) :]).encode(), cosigned_address(b2.hash))
            rep = verify_witnessed(b.ledger, [witness.verifier_key], 1)
            assert not rep.ok and rep.witnessed == [] and rep.uncovered == [0, 1, 2]  # B had no witness
            assert "block 1: the stored cosigned note is for another checkpoint" in rep.problems[0]
            assert "block 2:" in rep.problems[1] and "does not verify" in rep.problems[1]
            assert verify_witnessed(a.ledger, [witness.verifier_key], 1).ok
        finally:
            a.core.close()
            b.core.close()


# --- clients as witnesses ---------------------------------------------------------------------------------------


def test_clients_cosign_what_they_verified_and_detect_the_fork_when_the_views_meet(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(6)
    receipts = tmp_path / "receipts"
    a = LedgerStrategy(
        fedavg(),
        ledger=f"sqlite:///{tmp_path / 'a.db'}",
        keyring=clients.keyring,
        server_key=server_key,
        federation_id=FED,
    )
    b = LedgerStrategy(
        fedavg(),
        ledger=fork_of(a, tmp_path / "b.db"),
        keyring=clients.keyring,
        server_key=server_key,
        federation_id=FED,
    )
    try:
        mods = [make_signing_mod(k, receipts_dir=receipts) for k in clients.keys]
        side_a = Side(a, clients.keys[:3], mods[:3], [{}] * 3)
        side_b = Side(b, clients.keys[3:], mods[3:], [{}] * 3)
        for rnd in (1, 2):
            side_a.round(rnd)
            side_b.round(rnd, nodes=[301, 302, 303])
        # round 2: every client verified the checkpoint it was sent (consistent with round 1's) and cosigned it
        for side in (side_a, side_b):
            for k, reply, note in zip(side.keys, side.replies[2], side.sent[2]):
                line = reply.content[SIG_RECORD][COSIGNATURE]
                assert "\n" not in line and len(line) <= 512
                assert check_client_cosignature(line, note, raw_public(k))
                other = clients.keys[5] if k is not clients.keys[5] else clients.keys[0]
                assert not check_client_cosignature(line, note, raw_public(other))
        # the server recorded each verified client's cosignature in the round's block; verify re-checks them
        recorded = side_a.cosignatures()
        assert sorted(e.key_id for e in recorded) == sorted(key_id(k) for k in clients.keys[:3])
        assert verify(a.ledger, client_signatures=True).client_cosignatures == 3 + 3  # rounds 2 (and 1's head)
        # a cosignature by A's client on A's checkpoint is no cosignature of B's checkpoint of the same size
        line_a, note_a, note_b = (
            side_a.replies[2][0].content[SIG_RECORD][COSIGNATURE],
            side_a.sent[2][0],
            side_b.sent[2][0],
        )
        assert note_a.split("\n")[1] == note_b.split("\n")[1] and note_a != note_b  # same size, other root
        assert not check_client_cosignature(line_a, note_b, raw_public(clients.keys[0]))
        tampered = line_a[:-4] + ("AAAA" if not line_a.endswith("AAAA") else "BBBB")
        assert not check_client_cosignature(tampered, note_a, raw_public(clients.keys[0]))
        assert not check_client_cosignature("not a cosignature", note_a, raw_public(clients.keys[0]))

        # the views meet: A's client 0 (node 201) now gets an instruction from the equivocating server's view B.
        # It is one server, so it knows the size this client-witness stored; it cannot prove B extends it.
        b.core.receipts.node_seen["201"] = a.core.receipts.node_seen["201"]
        before = counts(receipts, clients.keys[0])["errors"]
        meet = Side(b, clients.keys[:1], mods[:1], [{}])
        meet.global_arrays = side_b.global_arrays
        reply = meet.round(3, nodes=[201])[0]
        assert counts(receipts, clients.keys[0])["errors"] == before + 1
        assert "FORK" in errors_log(receipts, clients.keys[0])
        assert COSIGNATURE not in reply.content[SIG_RECORD]  # no cosignature for a fork
        assert reply.content["metrics"][METRIC_ERRORS] == before + 1  # the alarm travels in its signed metrics
    finally:
        a.core.close()
        b.core.close()


def test_a_server_that_pretends_not_to_know_the_client_is_caught_at_the_second_meeting(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(4)
    receipts = tmp_path / "receipts"
    a = LedgerStrategy(fedavg(), ledger="memory:", keyring=clients.keyring, server_key=server_key, federation_id=FED)
    b = LedgerStrategy(
        fedavg(),
        ledger=fork_of(a, tmp_path / "b.db"),
        keyring=clients.keyring,
        server_key=server_key,
        federation_id=FED,
    )
    try:
        mods = [make_signing_mod(k, receipts_dir=receipts) for k in clients.keys]
        side_a = Side(a, clients.keys[:1], mods[:1], [{}])
        side_b = Side(b, clients.keys[1:], mods[1:], [{}] * 3)
        for rnd in (1, 2):
            side_a.round(rnd, nodes=[201])
            side_b.round(rnd, nodes=[301, 302, 303])
        meet = Side(b, clients.keys[:1], mods[:1], [{}])
        meet.global_arrays = side_b.global_arrays
        first = meet.round(3, nodes=[201])[0]  # B does not know node 201: the check is deferred, no cosignature
        assert COSIGNATURE not in first.content[SIG_RECORD]
        assert counts(receipts, clients.keys[0])["errors"] == 0
        second = meet.round(4, nodes=[201])[0]  # now B knows the size the client stored, and cannot prove it
        assert counts(receipts, clients.keys[0])["errors"] >= 1 and "FORK" in errors_log(receipts, clients.keys[0])
        assert COSIGNATURE not in second.content[SIG_RECORD]
    finally:
        a.core.close()
        b.core.close()


def test_legacy_replies_carry_the_cosignature_in_the_metrics(tmp_path):
    clients = Clients(1)
    key = clients.keys[0]
    strategy = LedgerStrategy(
        fedavg(), ledger="memory:", keyring=clients.keyring, server_key=Ed25519PrivateKey.generate(), federation_id=FED
    )
    try:
        mod = make_signing_mod(key, receipts_dir=tmp_path / "r")
        msg = next(iter(strategy.configure_train(1, arrays(0), ConfigRecord({}), FakeGrid([201]))))
        legacy = with_content(
            msg, RecordDict({"fitins.parameters": msg.content["arrays"], "fitins.config": msg.content["config"]})
        )

        def fit(m, c):
            return Message(
                RecordDict(
                    {
                        "fitres.parameters": arrays(1),
                        "fitres.metrics": ConfigRecord({"loss": 0.5}),
                        "fitres.num_examples": MetricRecord({"num_examples": 10}),
                    }
                ),
                reply_to=m,
            )

        reply = mod(legacy, ctx(201), fit)
        rec = reply.content["fitres.metrics"]
        assert check_client_cosignature(
            rec[LEGACY_COSIGNATURE], str(msg.content["config"][CTX_CHECKPOINT]), raw_public(key)
        )
    finally:
        strategy.core.close()


def test_client_witness_configuration_errors(tmp_path, monkeypatch):
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(1)
    witness = make_witness(tmp_path, server_key)
    strategy = LedgerStrategy(
        fedavg(), ledger="memory:", keyring=clients.keyring, server_key=server_key, federation_id=FED
    )
    try:
        msg = next(iter(strategy.configure_train(1, arrays(0), ConfigRecord({}), FakeGrid([201]))))

        def run(mod, **cfg):
            return mod(msg, ctx(201, **cfg), lambda m, c: train_reply(m, arrays(1), 10))

        with pytest.raises(KeyFileError, match="witness-quorum 2"):
            run(
                make_signing_mod(clients.keys[0], receipts_dir=tmp_path / "r1"),
                **{"witness-keys": witness.verifier_key, "witness-quorum": 2},
            )
        with pytest.raises(KeyFileError):
            run(make_signing_mod(clients.keys[0], receipts_dir=tmp_path / "r2"), **{"witness-keys": "nonsense"})
        with pytest.raises(KeyFileError, match="receipts directory"):
            run(make_signing_mod(clients.keys[0], witness_keys=witness.verifier_key))
        # the environment fallback: a checkpoint nobody cosigned is refused (the server had no witness)
        monkeypatch.setenv("FLOWER_CHAIN_WITNESS_KEYS", witness.verifier_key)
        monkeypatch.setenv("FLOWER_CHAIN_WITNESS_QUORUM", "1")
        reply = run(make_signing_mod(clients.keys[0], receipts_dir=tmp_path / "r3"))
        assert SIG_RECORD not in reply.content
        assert read_counts(tmp_path / "r3" / key_id(clients.keys[0]), FED)["errors"] == 1
        # a cosignature by the client itself is not a witness cosignature
        assert client_cosigner(raw_public(clients.keys[0])).vkey() != witness.verifier_key
    finally:
        strategy.core.close()


# --- a witness that is down or hangs ---------------------------------------------------------------------------


def test_a_down_or_hanging_witness_costs_at_most_the_timeout_and_is_recorded(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(3)
    witness = make_witness(tmp_path, server_key)
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts connections (backlog) and never answers
    down_url = f"http://127.0.0.1:{free_port()}"
    hang_url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    timeout = 0.5
    try:
        with ServerThread(witness_app(witness)) as url:
            t0 = time.perf_counter()
            s = LedgerStrategy(
                fedavg(),
                ledger="memory:",
                keyring=clients.keyring,
                server_key=server_key,
                federation_id=FED,
                witness_quorum=2,
                witness_timeout=timeout,
                witnesses=[
                    (url, witness.verifier_key),
                    (down_url, make_witness(tmp_path, server_key, "witness.test/w2").verifier_key),
                    (hang_url, make_witness(tmp_path, server_key, "witness.test/w3").verifier_key),
                ],
            )
            try:
                side = Side(s, clients.keys, [make_signing_mod(k) for k in clients.keys], [{}] * 3)
                for rnd in (1, 2):
                    t = time.perf_counter()
                    side.round(rnd)
                    assert time.perf_counter() - t < timeout + 1.5  # the round waited at most ~the timeout
                    assert side.verdicts() == ["ok"] * 3
                w = s.core.witnessing
                assert [x.height for x in w.shortfall] == [0, 1, 2]
                for x in w.shortfall:
                    assert x.cosignatures == 1 and x.quorum == 2
                    assert hang_url in x.errors
                assert max(w.cosign_seconds) < timeout + 0.5
                # what the clients are sent: the head's checkpoint with the one cosignature it got
                note = s.core.receipt_config(201)[CTX_CHECKPOINT]
                _, valid = verify_cosigned_checkpoint(
                    note, raw_public(server_key), [parse_cosigner_key(witness.verifier_key)], 1
                )
                assert list(valid) == ["witness.test/w1"]
            finally:
                s.core.close()
            assert time.perf_counter() - t0 < 4 * (timeout + 1.5) + 5
    finally:
        hang.close()


def test_witnessing_rejects_bad_settings(tmp_path):
    ledger = open_ledger("memory:", create=True)
    key = make_witness(tmp_path, Ed25519PrivateKey.generate()).verifier_key
    with pytest.raises(ValueError, match="at least one witness"):
        Witnessing(ledger, [], quorum=1)
    with pytest.raises(ValueError, match="quorum of 2"):
        Witnessing(ledger, [("http://127.0.0.1:1", key)], quorum=2)
    with pytest.raises(KeyFileError):
        Witnessing(ledger, [("http://127.0.0.1:1", "garbage")], quorum=1)
    with pytest.raises(ValueError, match="between 1 and 1"):
        verify_witnessed(ledger, [key], 2)


def test_verify_fails_on_a_cosignature_the_client_did_not_make(tmp_path):
    """A dishonest server that re-signs its history cannot record a client cosignature of another checkpoint."""
    import dataclasses

    from flower_chain.ledger.errors import VerificationError
    from tests.support.dishonest import rewrite

    server_key = Ed25519PrivateKey.generate()
    clients = Clients(3)
    path = tmp_path / "a.db"
    a = LedgerStrategy(
        fedavg(), ledger=f"sqlite:///{path}", keyring=clients.keyring, server_key=server_key, federation_id=FED
    )
    mods = [make_signing_mod(k, receipts_dir=tmp_path / "r") for k in clients.keys]
    side = Side(a, clients.keys, mods, [{}] * 3)
    for rnd in (1, 2):
        side.round(rnd)
    a.core.close()

    def swap_lines(blocks):  # give client 0's cosignature of round 1 to round 2 (another checkpoint)
        lines = [[e for e in entries if getattr(e, "TYPE", "") == "cosignature"] for _, entries in blocks]
        r1 = next(c for c in lines if c and c[0].round == 1)[0]
        for _, entries in blocks:
            for i, e in enumerate(entries):
                if getattr(e, "TYPE", "") == "cosignature" and e.round == 2 and e.key_id == r1.key_id:
                    entries[i] = dataclasses.replace(e, line=r1.line)

    rewrite(path, server_key, swap_lines)
    with open_ledger(f"sqlite:///{path}") as led, pytest.raises(VerificationError, match="cosignature"):
        verify(led, client_signatures=True)
