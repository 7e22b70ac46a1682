"""The legacy path (``FitRes.metrics`` keys ``flower-chain.*``) signs v2 statements as the Message API does:
the settings digest the server announces in ``FitIns.config``, the checkpoint size and pending round inside the
signature; an edit in transit of the unsigned ``flower-chain.checkpoint-size``/``pending-round`` changes nothing,
a client that signed other settings is rejected ``wrong-settings``, and the ledger verifies."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from flower_chain.clients.receipts import read_counts
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import UpdateStatement, open_ledger
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.verify import verify
from flower_chain.strategies import LegacyLedgerStrategy
from flower_chain.wire import CTX_SETTINGS, LEGACY_PENDING_ROUND, LEGACY_SEEN_SIZE, LEGACY_STATEMENT
from tests.support.fl_helpers import Clients, context

pytestmark = pytest.mark.usefixtures("task_identity")
MODEL = [np.ones((8, 4), np.float32)]
OTHER = hashlib.sha256(b"other settings").digest()


class SigningProxy(ClientProxy):
    """A legacy client in process whose FitRes goes through the real signing mod (with receipts); ``lie``: its
    instruction names other settings; every reply is edited in transit (the unsigned fields)."""

    def __init__(self, node_id: int, key, receipts, lie: bool = False):
        super().__init__(str(node_id))
        self.node_id, self.lie = node_id, lie
        self.mod = make_signing_mod(key, receipts_dir=receipts)
        self.statements: list[UpdateStatement] = []

    def fit(self, ins, timeout, group_id):
        if self.lie:
            ins.config[CTX_SETTINGS] = OTHER
        msg = Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=self.node_id, message_type="train")
        out = [np.full((8, 4), self.node_id, np.float32)]

        def body(m, _ctx):
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), 5, {"loss": 0.5})
            return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=m)

        res = compat.recorddict_to_fitres(self.mod(msg, context(self.node_id), body).content, keep_input=False)
        self.statements.append(UpdateStatement.from_bytes(res.metrics[LEGACY_STATEMENT]))
        res.metrics[LEGACY_SEEN_SIZE], res.metrics[LEGACY_PENDING_ROUND] = 1, 0  # a man in the middle
        return res

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def test_the_legacy_path_signs_v2_and_acts_on_the_signed_fields_only(tmp_path):
    clients, server_key = Clients(3), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path}/legacy-v2.db"
    inner = FedAvg(min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0)
    strategy = LegacyLedgerStrategy(inner, ledger=uri, keyring=clients.keyring, server_key=server_key)
    genesis = strategy.core.writer.genesis
    manager = SimpleClientManager()
    proxies = [SigningProxy(100 + i, k, tmp_path / "r", lie=i == 2) for i, k in enumerate(clients.keys)]
    for p in proxies:
        manager.register(p)
    params = ndarrays_to_parameters(MODEL)
    for rnd in (1, 2, 3):
        instructions = strategy.configure_fit(rnd, params, manager)
        assert all(ins.config[CTX_SETTINGS] == genesis.config_digest for _, ins in instructions)
        results = [(proxy, proxy.fit(ins, None, str(rnd))) for proxy, ins in instructions]
        params, _ = strategy.aggregate_fit(rnd, results, [])
        assert strategy.round_stats(rnd)["reasons"] == {"wrong-settings": 1}
    for p in proxies[:2]:
        st = p.statements[-1]
        assert (st.version, st.settings_digest) == (2, genesis.config_digest)
        assert strategy.core.node_seen[str(p.node_id)] == st.seen_size > 1  # signed, not the edited 1
        assert strategy.core.node_pending[str(p.node_id)][1] == st.pending_round == 3
    for k in clients.keys[:2]:  # every receipt of the honest clients verified: no fork, no censorship seen
        assert read_counts(tmp_path / "r" / key_id(k)) == {"receipts": 2, "errors": 0}
    strategy.close()
    ledger = open_ledger(uri)
    try:
        report = verify(ledger, client_signatures=True)
        assert report.rejected_proven == 3 and report.accepted_proven == 6
    finally:
        ledger.close()
