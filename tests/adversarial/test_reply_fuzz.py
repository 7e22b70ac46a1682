"""The trust boundary is total: mutated replies never crash the server, each gets one verdict, the ledger
verifies, and the wrapped strategy never raises on the accepted set.

Every example is one round: honest signed replies plus one reply mutated from a valid signed one (its
records, array bytes and NPY headers, metadata, metric types and values, statement and signature bytes).
``FUZZ_EXAMPLES`` sets the number of examples per test (CI default below; ``bench/bench_fuzz.py`` runs 10**6).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_chain.ledger import decode_entry, verify
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import parse_npy
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, signed_train_reply, with_content

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "16000"))  # + a quarter of that on the legacy API
NODES = [11, 12, 13]
pytestmark = pytest.mark.usefixtures("task_identity")


from tests.support.reply_mutations import header_variant, mutate, mutation, npy, raw_array, raw_set  # noqa: F401


class Round:
    """A federation whose rounds the fuzzer drives: 2 honest clients and one whose reply is mutated."""

    def __init__(self):
        self.clients = Clients(3)
        self.strategy = LedgerStrategy(
            fedavg(),
            ledger="memory:",
            keyring=self.clients.keyring,
            server_key=Ed25519PrivateKey.generate(),
            federation_id="fuzz",
            store_client_updates=False,
        )
        self.rnd = 0
        self.glob = arrays(0)

    def run(self, kind, detail, position):
        self.rnd += 1
        msgs = sorted(
            self.strategy.configure_train(self.rnd, self.glob, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        replies = [
            signed_train_reply(m, k, arrays(1000 + self.rnd * 3 + i), 10 + i)
            for i, (m, k) in enumerate(zip(msgs, self.clients.keys))
        ]
        bad = mutate(msgs[2], self.clients.keys[2], kind, detail)
        replies = replies[:2]
        replies.insert(position, bad)
        keep = [with_content(r, r.content) for r in replies]
        agg, _ = self.strategy.aggregate_train(self.rnd, replies)  # must not raise, whatever the reply holds
        head = self.strategy.ledger.head()
        entries = [decode_entry(d) for d in self.strategy.ledger.entries(head.header.first_index, head.header.log_size)]
        assert len(entries) == 3, "every reply gets exactly one verdict"
        honest = [e for i, e in enumerate(entries) if i != position]
        assert all(e.verdict == "accepted" for e in honest), [(e.reason, e.detail) for e in entries]
        mutated = entries[position]
        assert mutated.reason in (
            "ok",
            "unsigned",
            "malformed",
            "digest-mismatch",
            "num-examples-mismatch",
            "bad-signature",
            "unknown-key",
            "wrong-round",
            "wrong-federation",
        ), mutated.reason
        if mutated.verdict == "accepted":  # what was judged is what np.load gives the aggregator
            for name, a in keep[position].content["arrays"].items():
                view = parse_npy(a.data)
                loaded = np.load(io.BytesIO(a.data), allow_pickle=False)
                assert view.dtype == loaded.dtype and view.shape == loaded.shape
                assert view.tobytes() == loaded.tobytes()
        assert agg is not None and {a.numpy().dtype for a in agg.values()} == {np.dtype(np.float32)}
        self.glob = agg


@pytest.fixture(scope="module")
def federation():
    r = Round()
    yield r
    report = verify(r.strategy.ledger, client_signatures=True)  # the ledger verifies after every mutation
    assert report.verdicts_rederived + sum(report.not_rederived.values()) == 3 * r.rnd
    r.strategy.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(m=mutation(), position=st.integers(0, 2))
def test_mutated_replies_never_crash_the_server(federation, m, position):
    kind, detail = m
    federation.run(kind, detail, position)


@pytest.mark.parametrize("kind", ["negative-dim", "overflow", "zero-width", "float128", "object", "structured"])
def test_each_hostile_npy_header_is_malformed_not_a_crash(kind):
    r = Round()
    msgs = sorted(
        r.strategy.configure_train(1, r.glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
    )
    replies = [signed_train_reply(m, k, arrays(5 + i), 10) for i, (m, k) in enumerate(zip(msgs, r.clients.keys))]
    raw_set(replies[0].content["arrays"], "w", raw_array(header_variant(kind)))
    r.strategy.aggregate_train(1, replies)
    head = r.strategy.ledger.head()
    first = decode_entry(next(r.strategy.ledger.entries(head.header.first_index, head.header.first_index + 1)))
    assert (first.verdict, first.reason) == ("rejected", "malformed") and "array 'w'" in first.detail, first.detail


# -- the legacy API (FitRes from NumPyClient apps) ------------------------------------------------------------


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Manager:
    def __init__(self, n: int) -> None:
        self.proxies = [_Proxy(100 + i) for i in range(n)]

    def num_available(self) -> int:
        return len(self.proxies)

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return self.proxies[:num_clients]


class LegacyRound:
    """LegacyLedgerStrategy(FedAvg) with two honest legacy clients and one whose FitRes is mutated."""

    def __init__(self):
        from flwr.common import ndarrays_to_parameters
        from flwr.server.strategy import FedAvg as LegacyFedAvg

        from flower_chain.strategies import LegacyLedgerStrategy

        self.clients = Clients(3)
        self.strategy = LegacyLedgerStrategy(
            LegacyFedAvg(min_available_clients=3, min_fit_clients=3),
            ledger="memory:",
            keyring=self.clients.keyring,
            server_key=Ed25519PrivateKey.generate(),
            federation_id="fuzz-legacy",
            store_client_updates=False,
        )
        self.params = ndarrays_to_parameters([np.ones((8, 4), np.float32), np.zeros(4, np.float32)])
        self.rnd = 0

    def reply(self, ins, key, seed: int, n: int = 10):
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

        from flower_chain.ledger.arrays import array_digest
        from flower_chain.ledger.entries import UpdateStatement, metrics_digest
        from flower_chain.ledger.keys import key_id
        from flower_chain.wire import (
            CTX_BASE,
            CTX_FEDERATION,
            CTX_PARENT,
            CTX_ROUND,
            LEGACY_SIGNATURE,
            LEGACY_STATEMENT,
        )

        rng = np.random.default_rng(seed)
        out = [rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
        metrics = {"loss": 0.5, "note": "ok"}
        cfg = ins.config
        st = UpdateStatement(
            "train",
            str(cfg[CTX_FEDERATION]),
            int(cfg[CTX_ROUND]),
            key_id(key),
            bytes(cfg[CTX_PARENT]),
            bytes(cfg[CTX_BASE]),
            array_digest([(str(i), a) for i, a in enumerate(out)]),
            n,
            metrics_digest(metrics),
        ).to_bytes()
        return FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters(out),
            n,
            {**metrics, LEGACY_STATEMENT: st, LEGACY_SIGNATURE: key.sign(st)},
        )

    def run(self, kind, detail, position):
        self.rnd += 1
        pairs = self.strategy.configure_fit(self.rnd, self.params, _Manager(3))
        results = [
            (proxy, self.reply(ins, k, self.rnd * 3 + i))
            for i, ((proxy, ins), k) in enumerate(zip(pairs, self.clients.keys))
        ]
        proxy, res = results[2]
        if kind == "tensor":
            res.parameters.tensors[0] = res.parameters.tensors[0][: detail % 200]
        elif kind == "tensor-type":
            res.parameters.tensor_type = detail
        elif kind == "metric":
            res.metrics["extra"] = detail
        elif kind == "num-examples":
            res.num_examples = detail
        elif kind == "statement":
            from flower_chain.wire import LEGACY_STATEMENT

            res.metrics[LEGACY_STATEMENT] = detail
        results = results[:2]
        results.insert(position, (proxy, res))
        params, _ = self.strategy.aggregate_fit(self.rnd, results, [])  # never raises
        stats = self.strategy.round_stats(self.rnd)
        assert stats["accepted"] + stats["rejected"] == 3 and stats["accepted"] >= 2
        assert params is not None
        self.params = params


@pytest.fixture(scope="module")
def legacy_federation():
    r = LegacyRound()
    yield r
    report = verify(r.strategy.ledger, client_signatures=True)
    assert report.verdicts_rederived + sum(report.not_rederived.values()) == 3 * r.rnd
    r.strategy.close()


@settings(
    max_examples=max(EXAMPLES // 4, 50),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["tensor", "tensor-type", "metric", "num-examples", "statement", "legit"]),
    detail=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=2000),
        st.binary(max_size=600),
        st.none(),
        st.lists(st.integers(), max_size=3),
    ),
    position=st.integers(0, 2),
)
def test_mutated_legacy_replies_never_crash_the_server(legacy_federation, kind, detail, position):
    if kind == "tensor" and not isinstance(detail, int):
        detail = 7
    legacy_federation.run(kind, detail, position)
