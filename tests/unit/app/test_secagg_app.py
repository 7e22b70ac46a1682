"""The demo's SecAgg+ wiring without a federation: dropout settings, SecAgg+ parameters, the router, run.py's flag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flower_chain.app.client_app import _secure_aggregation_router
from flower_chain.app.secagg_client import SimulatedDropout, make_dropout_mod, parse_drops
from flower_chain.app.secagg_server import secagg_parameters
from flower_chain.clients.secagg import RECORD
from flower_chain.ledger.encoding import encode

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("task_identity")


def test_parse_drops_reads_stage_and_partition():
    assert parse_drops("") == {}
    assert parse_drops("setup:1 masked-input:3") == {1: "setup", 3: "masked-input"}
    assert parse_drops("share-keys:0,unmask:12") == {0: "share-keys", 12: "unmask"}


@pytest.mark.parametrize("bad", ["setup", "fit:1", "setup:-1", "setup:x", "setup:1 unmask:1", ":2"])
def test_parse_drops_refuses_what_it_cannot_read(bad):
    with pytest.raises(ValueError, match="secagg-drop"):
        parse_drops(bad)


def test_secagg_parameters_keep_one_dropout_per_neighbourhood():
    cfg = {"secagg-num-shares": 5, "secagg-threshold": 3}
    assert secagg_parameters(cfg, 10) == (5, 3)
    assert secagg_parameters(cfg, 6) == (5, 3)
    assert secagg_parameters(cfg, 4) == (5, 3)
    assert secagg_parameters(cfg, 3) == (5, 2)  # three nodes: any two rebuild a secret
    assert secagg_parameters({"secagg-num-shares": 3, "secagg-threshold": 3}, 10) == (3, 2)


def test_secagg_parameters_raise_the_threshold_to_a_strict_majority_of_the_neighbourhood():
    # nodes refuse a threshold t with 2t <= neighbourhood width (docs/secagg.md §7): the demo never picks one
    assert secagg_parameters({"secagg-num-shares": 10, "secagg-threshold": 2}, 10) == (10, 6)
    assert secagg_parameters({"secagg-num-shares": 5, "secagg-threshold": 2}, 10) == (5, 3)
    assert secagg_parameters({"secagg-num-shares": 5, "secagg-threshold": 2}, 4) == (5, 3)


@pytest.mark.parametrize(
    "cfg,n",
    [
        ({"secagg-num-shares": 5, "secagg-threshold": 3}, 2),
        ({"secagg-num-shares": 1, "secagg-threshold": 3}, 10),
        ({"secagg-num-shares": 5, "secagg-threshold": 1}, 10),
    ],
)
def test_secagg_parameters_refuse_what_protects_nothing(cfg, n):
    with pytest.raises(ValueError):
        secagg_parameters(cfg, n)


def _stage_msg(stage: str) -> Message:
    body = RecordDict(
        {RECORD: ConfigRecord({"request": encode({"stage": stage, "round_id": b"r", "content": {}, "proof": {}})})}
    )
    return Message(content=body, dst_node_id=7, message_type="train", group_id="1")


def _ctx(partition: int, run_config: dict) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": partition, "num-partitions": 6},
        state=RecordDict(),
        run_config=run_config,
    )


def test_the_dropout_mod_fails_only_the_named_stage_of_the_named_partition():
    mod, calls = make_dropout_mod(), []

    def call_next(msg, ctx):
        calls.append(msg)
        return "reply"

    cfg = {"secagg-drop": "setup:1 masked-input:3"}
    with pytest.raises(SimulatedDropout, match="partition 1 drops out in SecAgg\\+ stage setup"):
        mod(_stage_msg("setup"), _ctx(1, cfg), call_next)
    assert calls == []  # nothing answered
    assert mod(_stage_msg("share-keys"), _ctx(1, cfg), call_next) == "reply"
    assert mod(_stage_msg("setup"), _ctx(2, cfg), call_next) == "reply"
    calls.clear()
    with pytest.raises(SimulatedDropout, match="stage masked-input"):
        mod(_stage_msg("masked-input"), _ctx(3, cfg), call_next)
    assert len(calls) == 1  # it trained and masked; the reply is what is lost
    plain = Message(content=RecordDict(), dst_node_id=7, message_type="train", group_id="1")
    assert mod(plain, _ctx(1, cfg), call_next) == "reply"  # not a SecAgg+ stage


def test_the_router_hands_secure_aggregation_runs_to_the_legacy_app(monkeypatch):
    import flower_chain.app.secagg_client as secagg_client

    seen = []
    monkeypatch.setattr(
        secagg_client,
        "make_secagg_client_app",
        lambda overrides: lambda msg, ctx: seen.append(("secagg", msg)) or "secagg reply",
    )
    router = _secure_aggregation_router(None)
    msg = _stage_msg("setup")
    assert router(msg, _ctx(0, {"secure-aggregation": False}), lambda m, c: "message api") == "message api"
    assert router(msg, _ctx(0, {"secure-aggregation": True}), lambda m, c: "message api") == "secagg reply"
    assert seen == [("secagg", msg)]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num-clients", "2"], "needs at least 3 clients"),
        (["--no-ledger"], "cannot be combined with --no-ledger"),
        (["--attack", "scale", "--attackers", "1"], "cannot be combined with --attack"),
        (["--strategy", "fedmedian"], "use --strategy fedavg"),
    ],
)
def test_run_py_refuses_what_secure_aggregation_cannot_do(extra, message, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import run

    rc = run.main(["--secure-aggregation", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --secure-aggregation") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "d").exists()  # refused before anything was made
