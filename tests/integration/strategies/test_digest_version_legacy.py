"""The digest version's one owner on the legacy path: LegacyLedgerStrategy continuing a ledger whose genesis names
v1 sends the version in ``FitIns.config``, legacy clients signing through the real signing mod digest under it,
their replies are accepted and the ledger verifies; a legacy reply digested under v2 is rejected."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import array_digest
from flower_chain.strategies import LegacyLedgerStrategy
from flower_chain.wire import CTX_DIGEST_VERSION
from tests.support.digest_ledgers import cli, ledger_with_genesis
from tests.support.fl_helpers import Clients, context

pytestmark = pytest.mark.usefixtures("task_identity")
MODEL = [np.ones((8, 4), np.float32), np.asarray(3, np.int64)]  # a 0-d array: v1 and v2 digests differ


class ModProxy(ClientProxy):
    """A legacy client in process whose FitRes goes through ``make_signing_mod`` (as ``ClientApp(client_fn,
    mods=[signing_mod])`` runs it); ``version`` set: it ignores the context's and digests under that one."""

    def __init__(self, node_id: int, key, version: int | None = None):
        super().__init__(str(node_id))
        self.node_id, self.key, self.version = node_id, key, version

    def fit(self, ins, timeout, group_id):
        if self.version is not None:
            ins.config[CTX_DIGEST_VERSION] = self.version
        msg = Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=self.node_id, message_type="train")
        rng = np.random.default_rng(self.node_id)
        out = [rng.standard_normal((8, 4)).astype(np.float32), np.asarray(self.node_id, np.int64)]

        def body(m, _ctx):
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), 5, {"loss": 0.5})
            return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=m)

        reply = make_signing_mod(self.key)(msg, context(self.node_id), body)
        return compat.recorddict_to_fitres(reply.content, keep_input=False)

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def test_a_legacy_run_on_a_v1_ledger_judges_and_signs_under_v1(tmp_path):
    assert array_digest([(str(i), a) for i, a in enumerate(MODEL)], 1) != array_digest(
        [(str(i), a) for i, a in enumerate(MODEL)], 2
    )
    clients, server_key = Clients(3), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path}/legacy-v1.db"
    ledger_with_genesis(uri, clients, server_key, 1)
    inner = FedAvg(min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0)
    strategy = LegacyLedgerStrategy(inner, ledger=uri, keyring=clients.keyring, server_key=server_key)
    manager = SimpleClientManager()
    proxies = [ModProxy(100 + i, k, version=2 if i == 2 else None) for i, k in enumerate(clients.keys)]
    for p in proxies:
        manager.register(p)
    params = ndarrays_to_parameters(MODEL)
    for rnd in (1, 2):
        instructions = strategy.configure_fit(rnd, params, manager)
        assert all(ins.config[CTX_DIGEST_VERSION] == 1 for _, ins in instructions)
        results = [(proxy, proxy.fit(ins, None, str(rnd))) for proxy, ins in instructions]
        params, _ = strategy.aggregate_fit(rnd, results, [])
        stats = strategy.round_stats(rnd)
        assert stats["accepted"] == 2 and stats["reasons"] == {"wrong-base-model": 1}, stats
    strategy.close()
    ledger = open_ledger(uri)
    try:
        assert ledger.head().header.model_after == array_digest(
            [(str(i), np.asarray(a)) for i, a in enumerate(parameters_to_ndarrays(params))], 1
        )
    finally:
        ledger.close()
    code, out = cli("ledger", "verify", uri)
    assert code == 0 and "VERIFIED" in out, out
