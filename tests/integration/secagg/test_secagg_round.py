"""SecAgg+ rounds in process: Flower's ClientApp, LegacyContext and proxies; LedgerSecAggPlusWorkflow + secagg_mod."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from flower_chain.audit.secagg import audit_secagg
from flower_chain.ledger.arrays import decode_arrays
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.secagg import SecAggEntry
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def secagg_entries(ledger):
    return [e for e in map(decode_entry, ledger.entries()) if isinstance(e, SecAggEntry)]


@pytest.fixture
def fed(tmp_path):
    f = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=6, shapes=[(200, 100), (100,)])
    f.grid.drop[f.node_ids[4]] = "setup"  # never answers: dropped in stage 0
    f.grid.drop[f.node_ids[1]] = "masked-input"  # shares keys, then drops: dropped in stage 2
    return f


def test_round_completes_with_dropouts_in_stage_0_and_2_and_audit_proves_it(fed):
    figures = fed.run_round(1)
    assert figures["failure"] == "" and figures["masked"] == 4 and figures["dropped"] == 1
    live = [n for i, n in enumerate(fed.node_ids) if i not in (1, 4)]
    want = fed.expected(live, fed.initial)
    got = fed.model()
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=1e-3)  # quantization error only
    report = audit_secagg(fed.ledger)
    assert report.ok, report.lines()
    assert report.rounds == 1 and not report.findings
    assert (
        "round 1: aggregate = sum of 4 signed masked inputs (1 dropped in stage 2, 0 in stage 1, 1 in stage 0)"
        in report.proved[0]
    )
    assert "no individual update was revealed" in report.proved[0]
    by = {(e.stage, e.node_id): e for e in secagg_entries(fed.ledger)}
    assert by[("setup", str(fed.node_ids[4]))].reason == "no-reply"
    assert by[("masked-input", str(fed.node_ids[1]))].reason == "no-reply"


def test_second_round_verifies_consistency_with_the_first(fed):
    fed.run_round(1)
    first = fed.model()
    fed.grid.drop.clear()
    figures = fed.run_round(2)
    assert figures["failure"] == "" and figures["masked"] == 6
    want = fed.expected(fed.node_ids, first)
    for g, w in zip(fed.model(), want):
        np.testing.assert_allclose(g, w, atol=1e-3)
    report = audit_secagg(fed.ledger)
    assert report.ok and report.rounds == 2 and len(report.proved) == 2


def test_no_blob_equals_or_correlates_with_a_plaintext_update(fed, tmp_path):
    fed.run_round(1)
    models = set()
    for b in fed.ledger.blocks():
        models.update({b.header.model_before, b.header.model_after})
    conn = sqlite3.connect(tmp_path / "ledger.db")
    blobs = conn.execute("SELECT digest, data FROM blobs").fetchall()
    conn.close()
    plain = {
        n: np.concatenate([(p + u).reshape(-1) for p, u in zip(fed.initial, upd)]) for n, upd in fed.updates.items()
    }
    deltas = {n: np.concatenate([u.reshape(-1) for u in upd]) for n, upd in fed.updates.items()}
    masked = 0
    for digest, data in blobs:
        for n in fed.node_ids:
            for arr in fed.updates[n]:
                assert arr.tobytes() not in data, f"a blob holds node {n}'s plaintext update"
        if bytes(digest) in models:
            continue  # the global models (the aggregate), which are meant to be public
        try:
            named = decode_arrays(bytes(data))
        except Exception:  # noqa: BLE001, S112 - the strategy config blob, not arrays
            continue
        assert all(a.dtype == np.uint32 for _, a in named), "a non-model blob that is not a masked vector"
        vec = np.concatenate([a.reshape(-1) for _, a in named[1:]]).astype(np.float64)
        masked += 1
        for n in fed.node_ids:
            for ref in (plain[n], deltas[n]):
                assert abs(np.corrcoef(vec, ref.astype(np.float64))[0, 1]) < 0.05  # ~7 sigma for 20,100 values
    assert masked == 4


def test_flowers_32_bit_generator_is_recorded_and_audit_warns(tmp_path):
    fed = SecAggFederation("memory:", n=5, mask_generator="flwr-randomstate-32")
    assert fed.run_round(1)["failure"] == ""
    report = audit_secagg(fed.ledger)
    assert report.ok and len(report.proved) == 1
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert len(warnings) == 1 and warnings[0].round == 1 and "32 bits" in warnings[0].message


def test_drop_in_for_secaggplus_workflow_inside_default_workflow():
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import DefaultWorkflow

    fed = SecAggFederation("memory:", n=5)
    context = LegacyContext(
        fed.context, config=ServerConfig(num_rounds=2), strategy=fed.strategy, client_manager=SimpleClientManager()
    )  # DefaultWorkflow registers the grid's nodes
    DefaultWorkflow(fit_workflow=fed.workflow)(fed.grid, context)
    report = audit_secagg(fed.ledger)
    assert report.ok and report.rounds == 2, report.lines()
