"""A legacy run ends like a Message-API run (issue 22, requests-H R2): LegacyLedgerStrategy logs the same summary
(the ledger, train and evaluate verdicts, the ``audit`` and pinned ``verify`` commands) once, after the last
round, in process through Flower's own legacy loops (``Server.fit`` with a ``ServerConfig``, as ``server_fn``
apps run, with and without federated evaluation), and in a loop of one's own (``num_rounds=``, or "so far")."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.common import Code, DisconnectRes, ReconnectIns, ndarrays_to_parameters
from flwr.server import Server, ServerConfig, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import run_fl

from flower_chain.ledger.keys import generate, key_id, load_private
from flower_chain.strategies import LegacyLedgerStrategy
from tests.integration.audit.test_replay_bundled import legacy_fit_res

MODEL = [np.ones((8, 4), np.float32), np.zeros(4, np.float32)]


class SigningProxy(ClientProxy):
    """A legacy client in process: signs every fit and evaluate reply with its key."""

    def __init__(self, node_id: int, key):
        super().__init__(str(node_id))
        self.node_id, self.key = node_id, key

    def fit(self, ins, timeout, group_id):
        rng = np.random.default_rng(self.node_id + int(group_id or 0))
        return legacy_fit_res(ins, self.key, [rng.standard_normal(a.shape).astype(np.float32) for a in MODEL], 5)

    def evaluate(self, ins, timeout, group_id):
        """Signed over the model this client received (its digest is the statement's base)."""
        from flwr.common import EvaluateRes, Status, parameters_to_ndarrays

        from flower_chain.ledger.arrays import array_digest
        from flower_chain.ledger.entries import UpdateStatement, metrics_digest
        from flower_chain.wire import (
            CTX_FEDERATION,
            CTX_PARENT,
            CTX_ROUND,
            LEGACY_LOSS,
            LEGACY_SIGNATURE,
            LEGACY_STATEMENT,
        )

        cfg, metrics, loss = ins.config, {"acc": 0.75}, 0.25
        base = array_digest([(str(i), a) for i, a in enumerate(parameters_to_ndarrays(ins.parameters))])
        st = UpdateStatement(
            "evaluate",
            str(cfg[CTX_FEDERATION]),
            int(cfg[CTX_ROUND]),
            key_id(self.key),
            bytes(cfg[CTX_PARENT]),
            base,
            b"",
            4,
            metrics_digest({**metrics, LEGACY_LOSS: loss}),
        )
        st = st.to_bytes()
        return EvaluateRes(
            Status(Code.OK, ""), loss, 4, {**metrics, LEGACY_STATEMENT: st, LEGACY_SIGNATURE: self.key.sign(st)}
        )

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins: ReconnectIns, timeout, group_id):
        return DisconnectRes(reason="")


@pytest.fixture
def keys(tmp_path):
    """A `keys init`-like directory: server.key/.pub and a keyring of 3 client public keys."""
    server, _ = generate(tmp_path / "keys" / "server", "server")
    clients = [load_private(generate(tmp_path / "keys" / "clients", f"client-{i}")[0]) for i in range(3)]
    ring = tmp_path / "keys" / "keyring"
    ring.mkdir()
    for i in range(3):
        (ring / f"client-{i}.pub").write_bytes((tmp_path / "keys" / "clients" / f"client-{i}.pub").read_bytes())
    return server, ring, clients


def _strategy(tmp_path, keys, *, evaluate: bool, **kw):
    from flwr.server.strategy import FedAvg

    server, ring, _ = keys
    inner = FedAvg(
        min_available_clients=3,
        min_fit_clients=3,
        min_evaluate_clients=3,
        fraction_evaluate=1.0 if evaluate else 0.0,
        initial_parameters=ndarrays_to_parameters(MODEL),
    )
    return LegacyLedgerStrategy(
        inner,
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        server_key=str(server),
        keyring=str(ring),
        federation_id="legacy-summary",
        **kw,
    )


def _run_flower_loop(strategy, clients, rounds):
    manager = SimpleClientManager()
    for i, key in enumerate(clients):
        manager.register(SigningProxy(100 + i, key))
    run_fl(Server(client_manager=manager, strategy=strategy), ServerConfig(num_rounds=rounds))


def _summaries(caplog):
    """The summaries logged: lists of lines, each starting at its ``flower-chain: federation`` line."""
    out = []
    for r in caplog.records:
        msg = r.getMessage()
        if r.name == "flwr" and msg.startswith("flower-chain: federation "):
            out.append([msg])
        elif out and r.name == "flwr" and msg.startswith("  ") and len(out[-1]) < 8:
            out[-1].append(msg)
    return out


@pytest.mark.parametrize("evaluate", [True, False], ids=["with-federated-evaluation", "train-only"])
def test_flowers_legacy_loop_ends_with_one_summary_after_the_last_round(tmp_path, keys, caplog, evaluate):
    strategy = _strategy(tmp_path, keys, evaluate=evaluate)
    with caplog.at_level(logging.INFO, logger="flwr"):
        _run_flower_loop(strategy, keys[2], rounds=3)
    strategy.close()
    uri = f"sqlite:///{tmp_path / 'ledger.db'}"
    (summary,) = _summaries(caplog)  # once, not per round
    assert summary[0].startswith(f"flower-chain: federation legacy-summary, ledger {uri} (")
    assert "  train replies: 9 accepted, 0 rejected" in summary
    assert ("  evaluate replies: 9 accepted, 0 rejected" in summary) is evaluate, summary
    pub = (tmp_path / "keys" / "server" / "server.pub").resolve()
    assert f"  verify it:  flower-chain ledger verify {uri} --server-key {pub} --keys {keys[1].resolve()}" in summary
    assert f"  audit it:   flower-chain ledger audit {uri}" in summary
    messages = [r.getMessage() for r in caplog.records]
    last_round = max(i for i, m in enumerate(messages) if m.startswith("[flower-chain] round 3:"))
    assert messages.index(summary[0]) > last_round, "the summary comes after the last round"
    assert not any("so far" in m for m in messages)


def test_the_summary_is_the_message_api_ones(tmp_path, keys, caplog):
    """The same lines as the core's summary_lines() (what LedgerStrategy logs at the end of a Message-API run)."""
    strategy = _strategy(tmp_path, keys, evaluate=True)
    with caplog.at_level(logging.INFO, logger="flwr"):
        _run_flower_loop(strategy, keys[2], rounds=2)
    (summary,) = _summaries(caplog)
    assert summary == strategy.core.summary_lines()
    strategy.close()


def _own_loop(strategy, clients, rounds):
    """A loop of one's own, not Flower's: the strategy cannot see how many rounds it runs."""
    manager = SimpleClientManager()
    proxies = [SigningProxy(100 + i, key) for i, key in enumerate(clients)]
    for p in proxies:
        manager.register(p)
    params = strategy.initialize_parameters(manager)
    for rnd in range(1, rounds + 1):
        fits = strategy.configure_fit(rnd, params, manager)
        params, _ = strategy.aggregate_fit(rnd, [(p, p.fit(ins, None, rnd)) for p, ins in fits], [])
        evals = strategy.configure_evaluate(rnd, params, manager)
        if evals:
            strategy.aggregate_evaluate(rnd, [(p, p.evaluate(ins, None, rnd)) for p, ins in evals], [])


def test_a_loop_of_ones_own_with_num_rounds_logs_once_at_the_end(tmp_path, keys, caplog):
    strategy = _strategy(tmp_path, keys, evaluate=True, num_rounds=3)
    with caplog.at_level(logging.INFO, logger="flwr"):
        _own_loop(strategy, keys[2], 3)
    (summary,) = _summaries(caplog)
    assert (
        "  train replies: 9 accepted, 0 rejected" in summary and "  evaluate replies: 9 accepted, 0 rejected" in summary
    )
    strategy.close()


def test_a_loop_of_ones_own_without_num_rounds_says_so_far_after_every_round(tmp_path, keys, caplog):
    strategy = _strategy(tmp_path, keys, evaluate=False)
    with caplog.at_level(logging.INFO, logger="flwr"):
        _own_loop(strategy, keys[2], 2)
    summaries = _summaries(caplog)
    assert [s[1] for s in summaries] == [
        "  train replies: 3 accepted, 0 rejected",
        "  train replies: 6 accepted, 0 rejected",
    ]
    so_far = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert [m.split(" (")[0] for m in so_far] == [
        "flower-chain: so far, after round 1",
        "flower-chain: so far, after round 2",
    ]
    assert "num_rounds=" in so_far[0]
    strategy.close()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_num_rounds_must_be_a_positive_integer(tmp_path, keys, bad):
    with pytest.raises(ValueError, match="num_rounds must be a positive integer"):
        _strategy(tmp_path, keys, evaluate=False, num_rounds=bad)
