"""What a SecAgg+ node sends the server: the flower-chain SecAgg+ record and nothing else, at every stage.

The masked input's first element (the weight) is masked precisely to hide the node's example count; a reply that
also carried the app's FitRes record dict (``fitres.num_examples``, ``fitres.metrics``) would give it away in clear.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient

from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import RECORD, make_secagg_mod
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.secagg import StageStatement
from tests.support.secagg_federation import LocalGrid, SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")

SECRET_METRIC = "flower-chain-private-metric"


class TalkativeClient(NumPyClient):
    """A client whose fit returns an example count and metrics it would not want the server to see."""

    def __init__(self, update: list[np.ndarray], n: int) -> None:
        self.update, self.n = update, n

    def fit(self, parameters, config):
        return [p + u for p, u in zip(parameters, self.update)], self.n, {SECRET_METRIC: 0.4321, "loss": 1.25}


def _client_fn(fed: SecAggFederation, nid: int):
    def client_fn(context: Context):
        return TalkativeClient(fed.updates[nid], fed.examples[nid]).to_client()

    return client_fn


def _talkative(fed: SecAggFederation) -> dict[tuple[int, str], object]:
    """Give every node a TalkativeClient and record each reply as the server receives it."""
    for nid, key in zip(fed.node_ids, fed.keys):
        fed.grid.apps[nid] = ClientApp(
            client_fn=_client_fn(fed, nid), mods=[make_signing_mod(key), make_secagg_mod(key)]
        )
    seen: dict[tuple[int, str], object] = {}

    def tamper(nid, stage, request, reply):
        seen[(nid, stage)] = reply
        return reply

    fed.grid.tamper = tamper
    return seen


def test_every_stage_reply_carries_only_the_secagg_record_and_no_count_or_metric(tmp_path):
    fed = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=5)
    seen = _talkative(fed)
    figures = fed.run_round(1)
    assert figures["failure"] == "" and figures["masked"] == 5
    assert audit_secagg(fed.ledger).ok
    assert {stage for _, stage in seen} == set(LocalGrid.STAGES)
    for (nid, stage), reply in seen.items():
        assert not reply.has_error(), (nid, stage)
        content = reply.content
        assert list(content.keys()) == [RECORD], (nid, stage, list(content.keys()))
        assert not content.array_records and not content.metric_records, (nid, stage)
        rec = content.config_records[RECORD]
        assert sorted(rec.keys()) == ["payload", "signature", "statement"], (nid, stage)
        for field in rec.values():
            assert SECRET_METRIC.encode() not in field and b"num_examples" not in field, (nid, stage)
    for nid in fed.node_ids:
        reply = seen[(nid, "masked-input")]
        rec = reply.content.config_records[RECORD]
        assert list(decode(rec["payload"])) == ["vector"]
        signed = StageStatement.from_bytes(rec["statement"]).reply
        assert sorted(signed) == ["base_digest", "digest", "seed_digest", "sources", "weight"]
        q = round(fed.examples[nid] / 1000.0 * 4194304)  # the quantized weight the mask hides
        assert signed["weight"] != q


def test_the_app_still_sees_its_own_fit_results(tmp_path):
    """Dropping the fields from the reply must not drop them from the node's computation: the weight is masked, the
    aggregate is the example-weighted average."""
    fed = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=4, num_shares=3, threshold=2)
    _talkative(fed)
    assert fed.run_round(1)["failure"] == ""
    for got, want in zip(fed.model(), fed.expected(fed.node_ids, fed.initial)):
        np.testing.assert_allclose(got, want, atol=1e-3)
