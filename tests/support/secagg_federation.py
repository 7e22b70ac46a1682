"""An in-process SecAgg+ federation: Flower's own ClientApp, LegacyContext, client manager and proxies.

:class:`LocalGrid` hands each message to the destination node's ``ClientApp`` (``mods=[signing_mod,
secagg_mod]``) with that node's persistent ``Context``; ``drop`` makes a node silent from a stage on and
``tamper`` rewrites a reply on its way back (adversarial tests). :class:`SecAggFederation` builds the
server side (LegacyLedgerStrategy + LedgerSecAggPlusWorkflow) and runs rounds by calling the fit
workflow the way ``DefaultWorkflow`` does.
"""

from __future__ import annotations

import copy

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from flower_chain.clients.secagg import RECORD, make_secagg_mod
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.strategies import LedgerSecAggPlusWorkflow, LegacyLedgerStrategy

SHAPES = [(6, 4), (4,)]


def stage_of(msg: Message) -> str:
    """The SecAgg+ stage an instruction asks for ('' if it is none)."""
    rec = msg.content.config_records.get(RECORD)
    try:
        return decode(rec["request"])["stage"] if rec is not None else ""
    except Exception:  # noqa: BLE001 - a test helper reading a possibly tampered message
        return ""


class FixedClient(NumPyClient):
    """Returns a fixed update (the test knows every plaintext; the ledger must not)."""

    def __init__(self, update: list[np.ndarray], n: int) -> None:
        self.update, self.n = update, n

    def fit(self, parameters, config):
        return [p + u for p, u in zip(parameters, self.update)], self.n, {}


class LocalGrid(Grid):
    """Routes messages to in-process ClientApps; ``drop[node] = stage`` silences a node from that stage on."""

    STAGES = ("setup", "share-keys", "masked-input", "unmask")

    def __init__(self, apps: dict[int, ClientApp]) -> None:
        self.apps = apps
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={}) for nid in apps
        }
        self.drop: dict[int, str] = {}
        self.tamper = None  # (node, stage, request, reply) -> reply
        self.rewrite = None  # (node, stage, request) -> request (a dishonest server's edits)
        self.sent: list[tuple[int, str]] = []
        self.errors: list[tuple[int, str, Exception]] = []  # exceptions the node apps raised
        self._run = type("Run", (), {"run_id": 1})()

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.apps)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            nid, stage = msg.metadata.dst_node_id, stage_of(msg)
            if self.rewrite is not None:
                msg = self.rewrite(nid, stage, msg)
            self.sent.append((nid, stage))
            drop_at = self.drop.get(nid)
            if drop_at is not None and self.STAGES.index(stage) >= self.STAGES.index(drop_at):
                continue
            try:  # a copy, as the transport delivers one: nodes must not share the server's objects
                reply = self.apps[nid](copy.deepcopy(msg), self.contexts[nid])
            except Exception as e:  # noqa: BLE001 - what the Flower runtime does with a failing app
                self.errors.append((nid, stage, e))
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            if self.tamper is not None:
                reply = self.tamper(nid, stage, msg, reply)
            if reply is not None:
                out.append(reply)
        return out


class SecAggFederation:
    """``n`` nodes with fixed updates, a LegacyLedgerStrategy over ``uri`` and the SecAgg+ workflow."""

    def __init__(
        self,
        uri: str,
        n: int = 6,
        *,
        seed: int = 0,
        num_shares=5,
        threshold=3,
        shapes=SHAPES,
        strategy_kw=None,
        client_kw=None,
        server_key=None,
        keys=None,
        extra_keyring=None,
        **workflow_kw,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.keys = list(keys) if keys is not None else [Ed25519PrivateKey.generate() for _ in range(n)]
        self.server_key = server_key or Ed25519PrivateKey.generate()
        self.node_ids = [1000 + 7 * i for i in range(n)]
        self.initial = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        self.updates = {
            nid: [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes] for nid in self.node_ids
        }
        self.examples = {nid: 10 + 5 * i for i, nid in enumerate(self.node_ids)}
        apps = {}
        for nid, key in zip(self.node_ids, self.keys):
            apps[nid] = ClientApp(
                client_fn=self._client_fn(nid), mods=[make_signing_mod(key), make_secagg_mod(key, **(client_kw or {}))]
            )
        self.grid = LocalGrid(apps)
        self.strategy = LegacyLedgerStrategy(
            FedAvg(
                fraction_fit=1.0,
                fraction_evaluate=0.0,
                min_fit_clients=2,
                min_available_clients=2,
                initial_parameters=ndarrays_to_parameters(self.initial),
            ),
            ledger=uri,
            keyring={**(extra_keyring or {}), **{key_id(k): raw_public(k) for k in self.keys}},
            server_key=self.server_key,
            federation_id="fed-secagg",
            **(strategy_kw or {}),
        )
        self.workflow = LedgerSecAggPlusWorkflow(num_shares, threshold, **workflow_kw)
        manager = SimpleClientManager()
        for nid in self.node_ids:
            manager.register(GridClientProxy(node_id=nid, grid=self.grid, run_id=1))
        self.context = LegacyContext(
            Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            strategy=self.strategy,
            client_manager=manager,
        )
        self.context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(self.initial), True
        )
        self.context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord()

    def _client_fn(self, nid: int):
        def client_fn(context: Context):
            return FixedClient(self.updates[nid], self.examples[nid]).to_client()

        return client_fn

    @property
    def ledger(self):
        return self.strategy.ledger

    def model(self) -> list[np.ndarray]:
        """The global model the workflow left in the context."""
        params = compat.arrayrecord_to_parameters(self.context.state.array_records[MAIN_PARAMS_RECORD], True)
        from flwr.common import parameters_to_ndarrays

        return parameters_to_ndarrays(params)

    def run_round(self, server_round: int) -> dict:
        self.context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND] = server_round
        self.workflow(self.grid, self.context)
        return self.workflow.last_round

    def expected(self, live: list[int], base: list[np.ndarray]) -> list[np.ndarray]:
        """The exact weighted average of the live nodes' updated models (what quantization approximates)."""
        w = {n: round(self.examples[n] / 1000.0 * 4194304) / 4194304 for n in live}
        total = sum(w.values())
        return [
            sum(w[n] * (base[i].astype(np.float64) + self.updates[n][i]) for n in live) / total
            for i in range(len(base))
        ]
