"""Clients check what the server sends: the signed head block header, the global model it records, the
verdicts on their own updates; receipt state per log origin; counters shared by processes of a node."""

from __future__ import annotations

import multiprocessing

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import MetricRecord, RecordDict

from flower_chain.clients.receipts import (
    ERRORS_LOG,
    METRIC_ERRORS,
    METRIC_RECEIPTS,
    ReceiptKeeper,
    origin_dir_name,
    origin_for,
    read_counts,
)
from flower_chain.ledger.keys import key_id
from flower_chain.wire import CTX_CHECKPOINT, CTX_FEDERATION, CTX_HEAD, CTX_HEAD_SIGNATURE, SIG_RECORD
from tests.integration.clients.test_receipts import NODES, World
from tests.support.fl_helpers import Clients, arrays, with_content

pytestmark = pytest.mark.usefixtures("task_identity")


def _errors(w: World, i: int) -> str:
    p = w.dir(i) / ERRORS_LOG
    return p.read_text() if p.exists() else ""


def test_honest_runs_count_no_error(tmp_path):
    w = World(tmp_path)
    for rnd in (1, 2, 3, 4, 5):
        w.round(rnd)
    for i in range(len(NODES)):
        assert w.counts(i) == {"receipts": 4, "errors": 0}, _errors(w, i)
    assert w.replies[5][2].content["metrics"][METRIC_ERRORS] == 0


def test_a_server_that_sends_one_node_another_model_than_its_log_records_is_caught(tmp_path):
    w = World(tmp_path)
    w.round(1)
    w.round(2, tamper={0: lambda config: (config, arrays(999))})  # node 0 gets another model
    assert w.counts(0)["errors"] == 1
    assert "another global model than its log records" in _errors(w, 0)
    assert all(w.counts(i)["errors"] == 0 for i in (1, 2))
    w.round(3)
    # the node trained on what it got, signed it, the server rejected it (wrong-base-model): flagged too
    assert w.counts(0)["errors"] == 2
    assert "as rejected: wrong-base-model" in _errors(w, 0)
    # and the count travels in its signed metrics
    assert w.replies[3][0].content["metrics"][METRIC_ERRORS] == 2
    assert all(w.counts(i) == {"receipts": 2, "errors": 0} for i in (1, 2))


def test_a_server_that_records_a_valid_update_as_rejected_is_caught(tmp_path):
    w = World(tmp_path)
    w.round(1)
    replies = w.round(2, aggregate=False)
    # the server (or someone on its side of the wire) changes node 1's reported metrics, so the ledger
    # records node 1's validly signed update as rejected (digest-mismatch)
    good = replies[1]
    changed = RecordDict(
        {
            "arrays": good.content["arrays"],
            SIG_RECORD: good.content[SIG_RECORD],
            "metrics": MetricRecord({**dict(good.content["metrics"].items()), "train_loss": 9.0}),
        }
    )
    replies[1] = with_content(good, changed)
    w.global_arrays, _ = w.strategy.aggregate_train(2, replies)
    w.round(3)
    assert w.counts(1) == {"receipts": 1, "errors": 1}
    log = _errors(w, 1)
    assert "the server recorded this client's valid update of round 2 as rejected: digest-mismatch" in log
    assert (w.dir(1) / "round-2.proof").is_file()  # the receipt is kept: evidence of the verdict
    assert w.counts(0) == {"receipts": 2, "errors": 0}


def test_missing_or_forged_head_header_is_an_error(tmp_path):
    w = World(tmp_path)
    w.round(1)
    old = {}

    def keep(config):
        old.update(config)
        return config

    w.round(2, tamper={2: keep})
    w.round(
        3,
        tamper={
            0: lambda c: {k: v for k, v in c.items() if k not in (CTX_HEAD, CTX_HEAD_SIGNATURE)},  # no head at all
            1: lambda c: {**c, CTX_HEAD_SIGNATURE: bytes(64)},  # bad signature
            2: lambda c: {**c, CTX_HEAD: old[CTX_HEAD], CTX_HEAD_SIGNATURE: old[CTX_HEAD_SIGNATURE]},  # stale head
        },
    )
    assert "no head block header" in _errors(w, 0)
    assert "signature does not verify" in _errors(w, 1)
    assert "is not the head of the checkpointed log" in _errors(w, 2)
    assert [w.counts(i)["errors"] for i in range(3)] == [1, 1, 1]
    assert [w.counts(i)["receipts"] for i in range(3)] == [2, 2, 2]  # the rest of the receipt still checked


def test_two_federations_with_the_same_keys_count_no_error(tmp_path):
    clients, server = Clients(len(NODES)), Ed25519PrivateKey.generate()
    first = World(tmp_path, server_key=server, clients=clients, federation="fed-one")
    for rnd in (1, 2, 3):
        first.round(rnd)
    second = World(tmp_path, server_key=server, clients=clients, federation="fed-two")  # run.py's next run
    for rnd in (1, 2, 3):
        second.round(rnd)
    for i in range(len(NODES)):
        assert first.counts(i) == {"receipts": 2, "errors": 0}, _errors(first, i)
        assert second.counts(i) == {"receipts": 2, "errors": 0}, _errors(second, i)
        assert first.dir(i) != second.dir(i)
        assert sorted(p.name for p in second.dir(i).glob("round-*.proof")) == ["round-1.proof", "round-2.proof"]
        assert (second.dir(i) / "origin.txt").read_text().strip() == "flower-chain/fed-two"
        assert read_counts(first.key_dir(i)) == {"receipts": 4, "errors": 0}  # summed over both logs
    # each federation's metrics count its own log
    last = second.replies[3][0].content["metrics"]
    assert last[METRIC_RECEIPTS] == 2 and last[METRIC_ERRORS] == 0


def test_origin_directories_are_filesystem_safe_and_distinct():
    names = {
        origin_dir_name(o)
        for o in (
            "flower-chain/a/b",
            "flower-chain/a_b",
            "flower-chain/../..",
            "flower-chain/" + "x" * 500,
            "flower-chain/\n$x^2$",
        )
    }
    assert len(names) == 5
    for n in names:
        assert "/" not in n and "\n" not in n and not n.startswith(".") and len(n) <= 61


def test_network_text_cannot_forge_error_log_lines(tmp_path):
    keeper = ReceiptKeeper(tmp_path)
    forged = "flower-chain/fed\n2099-01-01T00:00:00 everything verified\u202e" + "x" * 10_000
    keeper.check("fed", {CTX_CHECKPOINT: forged + "\n\n\u2014 x y\n"})
    keeper.check("fed", {})
    log = (keeper.log_dir("fed") / ERRORS_LOG).read_text()
    assert log.count("\n") == 2 == read_counts(tmp_path, "fed")["errors"]
    assert "\u202e" not in log and len(log) < 2000


def _hammer(directory: str, n: int, start) -> None:
    keeper = ReceiptKeeper(directory)
    start.wait()
    for _ in range(n):
        keeper.check("fed", {CTX_FEDERATION: "fed"})  # "the server sent no checkpoint": one error each


def test_two_processes_counting_at_once_lose_no_count(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), 150, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert read_counts(tmp_path, "fed") == {"receipts": 0, "errors": 300}
    assert ReceiptKeeper(tmp_path).metrics_for("fed")[METRIC_ERRORS] == 300


def test_the_key_directory_keeps_one_state_file_and_one_directory_per_log(tmp_path):
    w = World(tmp_path)
    w.round(1)
    w.round(2)
    kd = w.key_dir(0)
    assert kd.name == key_id(w.clients.keys[0])
    assert {p.name for p in kd.iterdir() if p.is_dir()} == {origin_dir_name(origin_for("fed-r"))}
    assert (kd / "server-key").is_file() and (kd / "state.sqlite").is_file()
    assert not (kd / "counts.json").exists()
