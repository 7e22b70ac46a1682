"""A dishonest server and evaluation (issue 19, item 2): evaluation is bound to the ledger.

* an evaluate instruction carrying another model than the ledger's: the server's own judge, ``ledger verify``
  (re-deriving ``wrong-base-model`` from the evaluate block's ``model_before``) and the client (a receipt
  error) all see it;
* an honest evaluate reply recorded as rejected, or dropped: the client's receipts catch it, as for train;
* federated evaluation summaries doubled, added, or mislabelled (round, source): ``ledger verify`` fails naming
  the block; centralized results are named as unchecked claims of the server.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.clients.receipts import origin_dir_name, origin_for, read_counts
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.entries import EvaluationEntry, UpdateEntry, UpdateStatement, metrics_digest
from flower_chain.ledger.keys import key_id
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import SIG_RECORD, SIGNATURE
from tests.conftest import Federation
from tests.support import dishonest
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, fedavg, train_reply, with_content

NODES = [101, 102, 103]

pytestmark = pytest.mark.usefixtures("task_identity")


def cli(*args: str):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())


# -- the ledger side: synthetic ledgers, rewritten and re-signed ------------------------------------------------


def evaluate_entry(f: Federation, rnd: int, i: int, base: bytes, *, verdict="accepted", reason="ok") -> UpdateEntry:
    """Client i's signed evaluate reply of round ``rnd`` on the model ``base``, as the next block records it."""
    k = f.client_keys[i]
    metrics = {"eval_loss": 0.5 + i}
    st = UpdateStatement(
        "evaluate", f.federation_id, rnd, key_id(k), f.writer.head_hash, base, b"", 20 + i, metrics_digest(metrics)
    ).to_bytes()
    return UpdateEntry(
        kind="evaluate",
        round=rnd,
        node_id=str(i),
        key_id=key_id(k),
        verdict=verdict,
        reason=reason,
        detail="",
        num_examples=20 + i,
        arrays_digest=b"",
        metrics=metrics,
        statement=st,
        signature=k.sign(st),
    )


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """Blocks: 0 genesis; 1 train round 1; 2 centralized evaluation of round 1; 3 evaluate round 1 (3 replies and
    one federated summary); 4 train round 2; 5 evaluate round 2, whose reply 0 evaluated another model (rejected
    as ``wrong-base-model``, as an honest server records it)."""
    d = tmp_path_factory.mktemp("dishonest-eval")
    f = Federation(f"sqlite:///{d}/honest.db", n_clients=3, federation_id="fed-e")
    f.add_round(1, n=3)
    f.add_block(1, [EvaluationEntry(round=1, source="centralized", num_replies=0, metrics={"accuracy": 0.9})])
    model = f.writer.head.header.model_after
    f.add_block(
        1,
        [evaluate_entry(f, 1, i, model) for i in range(3)]
        + [EvaluationEntry(round=1, source="federated", num_replies=3, metrics={"eval_loss": 1.5})],
    )
    f.add_round(2, n=3)
    model = f.writer.head.header.model_after
    other = bytes(32)
    f.add_block(
        2,
        [evaluate_entry(f, 2, 0, other, verdict="rejected", reason="wrong-base-model")]
        + [evaluate_entry(f, 2, i, model) for i in (1, 2)]
        + [EvaluationEntry(round=2, source="federated", num_replies=2, metrics={"eval_loss": 2.0})],
    )
    f.ledger.close()
    path = d / "honest.db"
    code, out = cli("ledger", "verify", f"sqlite:///{path}")
    assert code == 0 and "VERIFIED" in out, out
    assert "evaluate verdicts: ok 5, wrong-base-model 1" in out, out
    return path, f


def rewritten(honest, tmp_path, edit) -> str:
    path, f = honest
    copy = tmp_path / "dishonest.db"
    shutil.copy(path, copy)
    dishonest.rewrite(copy, f.server_key, lambda blocks: edit(blocks))
    return f"sqlite:///{copy}"


def test_centralized_results_are_named_unchecked_claims_of_the_server(honest):
    code, out = cli("ledger", "verify", f"sqlite:///{honest[0]}")
    assert code == 0
    assert "1 centralized evaluation results (rounds 1) are unchecked claims of the server" in out, out


def test_evaluation_of_another_model_recorded_as_accepted_fails_verify(honest, tmp_path):
    def accept(blocks):
        blocks[5][1][0] = dataclasses.replace(blocks[5][1][0], verdict="accepted", reason="ok")
        blocks[5][1][-1] = dataclasses.replace(blocks[5][1][-1], num_replies=3)

    uri = rewritten(honest, tmp_path, accept)
    code, out = cli("ledger", "verify", "--no-client-signatures", uri)
    assert code == 0, out  # the re-signed rewrite holds together: only the re-derivation catches it
    code, out = cli("ledger", "verify", uri)
    assert code == 1, out
    assert "block 5" in out and "entry 0" in out and "'wrong-base-model'" in out and "evaluated other arrays" in out


def test_evaluation_bound_to_another_model_in_the_header_fails_verify(honest, tmp_path):
    """The server re-labels the evaluate block with the model the clients evaluated: the model chain breaks."""

    def relabel(blocks):
        blocks[5][0]["model_before"] = blocks[5][0]["model_after"] = bytes(32)

    code, out = cli("ledger", "verify", rewritten(honest, tmp_path, relabel))
    assert code == 1 and "block 5" in out, out


SUMMARY_EDITS = {
    # two federated summaries in the evaluate block of round 1
    "doubled": (lambda b: b[3][1].append(b[3][1][-1]), 3, "2 federated evaluation summaries in one block"),
    # a second federated summary of round 1 in a block of its own
    "second-block": (lambda b: b.insert(4, [dict(b[3][0]), [b[3][1][-1]]]), 4, "a block without evaluate replies"),
    # a federated summary added to the train block of round 2 (no evaluate reply supports it)
    "added": (
        lambda b: b[4][1].append(EvaluationEntry(round=2, source="federated", num_replies=0, metrics={})),
        4,
        "a federated evaluation summary in a block without evaluate replies",
    ),
    # the summary of round 1 labelled round 2
    "round": (
        lambda b: b[3][1].__setitem__(-1, dataclasses.replace(b[3][1][-1], round=2)),
        3,
        "an evaluation summary of round 2 in a block of round 1",
    ),
    # the federated summary labelled centralized (the clients' results passed off as the server's)
    "source-centralized": (
        lambda b: b[3][1].__setitem__(-1, dataclasses.replace(b[3][1][-1], source="centralized")),
        3,
        "a centralized evaluation summary beside evaluate replies",
    ),
    # an unknown source
    "source-unknown": (
        lambda b: b[3][1].__setitem__(-1, dataclasses.replace(b[3][1][-1], source="clients")),
        3,
        "unknown source 'clients'",
    ),
    # the evaluate replies kept, their summary dropped
    "dropped": (lambda b: [b[3][1].pop(), None][1], 3, "3 evaluate replies but no federated evaluation summary"),
    # a centralized result claiming clients' replies
    "centralized-count": (
        lambda b: b[2][1].__setitem__(0, dataclasses.replace(b[2][1][0], num_replies=3)),
        2,
        "a centralized evaluation summary beside evaluate replies or counting 3",
    ),
}


@pytest.mark.parametrize("case", SUMMARY_EDITS)
def test_summary_doubled_added_or_mislabelled_fails_verify(honest, tmp_path, case):
    edit, height, phrase = SUMMARY_EDITS[case]
    code, out = cli("ledger", "verify", rewritten(honest, tmp_path, edit))
    assert code == 1, out
    assert f"block {height}" in out and phrase in out, out


# -- the running side: a LedgerStrategy and clients signing through the real mod ---------------------------------


def eval_reply(msg: Message, n: int) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "eval_loss": 0.5})}), reply_to=msg)


class World:
    """A LedgerStrategy (FedAvg, federated evaluation on every node) and three clients keeping receipts."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.clients = Clients(len(NODES))
        self.uri = f"sqlite:///{tmp_path}/l.db"
        self.strategy = LedgerStrategy(
            fedavg(fraction_evaluate=1.0, min_evaluate_nodes=1),
            ledger=self.uri,
            keyring=self.clients.keyring,
            server_key=Ed25519PrivateKey.generate(),
            federation_id="fed-ev",
        )
        self.mods = [make_signing_mod(k, receipts_dir=tmp_path / "receipts") for k in self.clients.keys]
        self.global_arrays = arrays(0)

    def key_dir(self, i):
        return self.tmp / "receipts" / key_id(self.clients.keys[i])

    def errors(self, i) -> str:
        p = self.key_dir(i) / origin_dir_name(origin_for("fed-ev")) / "errors.log"
        return p.read_text() if p.exists() else ""

    def train(self, rnd):
        msgs = sorted(
            self.strategy.configure_train(rnd, self.global_arrays, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        replies = [
            mod(m, context(), lambda msg, c, i=i: train_reply(msg, arrays(100 * rnd + i), 10))
            for i, (m, mod) in enumerate(zip(msgs, self.mods))
        ]
        self.global_arrays, _ = self.strategy.aggregate_train(rnd, replies)

    def evaluate(self, rnd, *, model=None, tamper_reply=None):
        msgs = sorted(
            self.strategy.configure_evaluate(rnd, model or self.global_arrays, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        replies = [mod(m, context(), lambda msg, c: eval_reply(msg, 20)) for m, mod in zip(msgs, self.mods)]
        if tamper_reply is not None:
            replies[0] = tamper_reply(replies[0])
        self.strategy.aggregate_evaluate(rnd, replies)
        return replies


def test_honest_run_with_evaluation_keeps_every_receipt_and_verifies(tmp_path):
    w = World(tmp_path)
    for rnd in (1, 2, 3):
        w.train(rnd)
        w.evaluate(rnd)
    for i in range(len(NODES)):
        assert w.errors(i) == ""
        # train 1, evaluate 1, train 2, evaluate 2, train 3 were receipted with the following instructions
        assert read_counts(w.key_dir(i), "fed-ev") == {"receipts": 5, "errors": 0}
        d = w.key_dir(i) / origin_dir_name(origin_for("fed-ev"))
        assert (d / "round-2-evaluate.proof").is_file() and (d / "round-2.proof").is_file()
    code, out = cli("ledger", "verify", w.uri)
    assert code == 0 and "evaluate verdicts: ok 9" in out, out


def test_evaluate_instruction_with_another_model_is_rejected_and_flagged_by_the_client(tmp_path):
    w = World(tmp_path)
    w.train(1)
    w.evaluate(1, model=arrays(999))  # the server has the clients evaluate a model its ledger does not record
    for i in range(len(NODES)):
        assert "another global model than its log records" in w.errors(i), w.errors(i)
    code, out = cli("ledger", "verify", w.uri)
    assert code == 0, out  # the honest judge rejected them, and verify re-derives that verdict
    assert "evaluate verdicts: wrong-base-model 3" in out, out


def _bad_signature(reply: Message) -> Message:
    fields = dict(reply.content[SIG_RECORD].items())
    sig = bytearray(fields[SIGNATURE])
    sig[0] ^= 1
    fields[SIGNATURE] = bytes(sig)
    content = RecordDict({k: v for k, v in reply.content.items() if k != SIG_RECORD})
    content[SIG_RECORD] = ConfigRecord(fields)
    return with_content(reply, content)


def _other_metrics(reply: Message) -> Message:
    content = RecordDict({k: v for k, v in reply.content.items() if k != "metrics"})
    content["metrics"] = MetricRecord({"num-examples": 20, "eval_loss": 9.75})  # a poor result, as if the client's
    return with_content(reply, content)


@pytest.mark.parametrize("tamper,phrase", [(_bad_signature, "missing from the ledger"), (_other_metrics, "rejected")])
def test_honest_evaluate_reply_recorded_as_rejected_is_a_receipt_error(tmp_path, tamper, phrase):
    w = World(tmp_path)
    w.train(1)
    w.evaluate(1, tamper_reply=tamper)  # the server spoils client 0's evaluation and records it rejected
    w.train(2)  # the next instructions carry (or fail to carry) the receipt
    w.train(3)
    # a reply whose signature "fails" does not tell the server what its node saw: the next instruction's
    # consistency proof is from an older size (flagged too), and the receipts are checked with the one after
    problems = [line for line in w.errors(0).splitlines() if "FORK" not in line]
    assert len(problems) == 1, w.errors(0)
    assert phrase in problems[0] and "round 1" in problems[0], w.errors(0)
    for i in (1, 2):
        assert w.errors(i) == ""
