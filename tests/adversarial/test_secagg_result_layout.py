"""R2-5: a model_after that drops, renames or recasts an array of the round's base model is a finding.

The SecAgg+ auditor used to take the names and dtypes of the replayed aggregate from the server's own result
record and ``zip`` them with the replayed arrays (zip truncates), and nothing compared model_after's layout with
model_before's: a dishonest server recording the aggregate with its last array dropped and the rest cast to
float16 or int8 passed ``audit_secagg``, ``ledger verify --blobs`` and ``ledger audit``. Each test fails
without the fix (audit ok; verify --blobs VERIFIED).
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_chain.audit.secagg import audit_secagg
from flower_chain.ledger.arrays import array_digest, encode_arrays
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import digest_version_of
from flower_chain.strategies import secagg_workflow as workflow_module
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")

ATTACKS = {
    "truncated": lambda named: named[:-1],
    "renamed": lambda named: [(f"layer{n}", a) for n, a in named],
    "float16": lambda named: [(n, np.asarray(a).astype("float16")) for n, a in named[:-1]],
    "int8": lambda named: [(n, np.asarray(a).astype("int8")) for n, a in named[:-1]],
    "float64": lambda named: [(n, np.asarray(a).astype("float64")) for n, a in named],
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_result_off_the_base_layout_is_a_result_finding(monkeypatch, tmp_path, attack):
    """The server records (and stores) the aggregate in another layout: the audit names the round's result."""
    fed = SecAggFederation(f"sqlite:///{tmp_path}/s.db", n=5)
    honest = workflow_module._Round._commit_result

    def dishonest(self, live, named, agg_digest, failure, store):
        return honest(self, live, ATTACKS[attack](named) if named else named, agg_digest, failure, store)

    monkeypatch.setattr(workflow_module._Round, "_commit_result", dishonest)
    fed.run_round(1)
    rep = audit_secagg(fed.ledger)
    assert not rep.ok
    results = [f for f in rep.findings if f.round == 1 and f.stage == "result" and f.severity == "error"]
    assert results, [str(f) for f in rep.findings]
    assert any("base model" in f.message or "substituted" in f.message for f in results), [str(f) for f in results]
    with pytest.raises(VerificationError, match="layout") as e:  # and the plain check, without the replay
        verify(fed.ledger, blobs=True)
    assert e.value.height == fed.ledger.head().header.height


def test_an_honest_secagg_round_keeps_the_layout(tmp_path):
    fed = SecAggFederation(f"sqlite:///{tmp_path}/s.db", n=5)
    fed.run_round(1)
    fed.run_round(2)
    assert audit_secagg(fed.ledger).ok
    assert verify(fed.ledger, blobs=True).blocks == fed.ledger.block_count()


def _model(dtype="float32", last=True):
    named = [("w", np.full((6, 4), 0.25, dtype)), ("b", np.arange(4).astype(dtype))]
    return named if last else named[:-1]


@pytest.mark.parametrize(
    "degraded",
    [
        _model("float16"),
        _model("int8"),
        _model(last=False),
        [("weight", _model()[0][1]), ("b", _model()[1][1])],
        [("w", np.zeros((4, 6), np.float32)), ("b", np.zeros(4, np.float32))],
    ],
    ids=["float16", "int8", "truncated", "renamed", "reshaped"],
)
def test_verify_blobs_rejects_a_plain_round_that_changes_the_model_layout(federation_factory, degraded):
    """A plain train round whose model_after (stored, hashing to its address) is not in model_before's layout."""
    f = federation_factory("sqlite")
    version = digest_version_of(f.ledger)

    def stored(named):
        digest = array_digest(named, version)
        f.ledger.put_blob(encode_arrays(named), digest)
        return digest

    models = [stored(_model()), stored([(n, a + 1) for n, a in _model()]), stored(degraded)]
    for rnd, (before, after) in enumerate(zip(models, models[1:], strict=False), start=1):
        f.writer.append(rnd, [f.update(rnd, i, base=before) for i in range(3)], model_before=before, model_after=after)
    verify(f.ledger, full=True)  # hashes, signatures, the model chain: all in order
    with pytest.raises(VerificationError, match="layout") as e:
        verify(f.ledger, blobs=True)
    assert e.value.height == 2
    first = federation_factory("sqlite")  # the first round: model_before is the stored initial model
    version = digest_version_of(first.ledger)
    initial, bad = array_digest(_model(), version), array_digest(degraded, version)
    first.ledger.put_blobs([(initial, encode_arrays(_model())), (bad, encode_arrays(degraded))])
    first.writer.append(1, [first.update(1, i, base=initial) for i in range(3)], model_before=initial, model_after=bad)
    with pytest.raises(VerificationError, match="layout") as e:
        verify(first.ledger, blobs=True)
    assert e.value.height == 1


def test_verify_blobs_accepts_a_plain_chain_in_one_layout(federation_factory):
    f = federation_factory("sqlite")
    version = digest_version_of(f.ledger)
    models = []
    for k in range(3):
        named = [(n, a + k) for n, a in _model()]
        models.append(array_digest(named, version))
        f.ledger.put_blob(encode_arrays(named), models[-1])
    for rnd, (before, after) in enumerate(zip(models, models[1:], strict=False), start=1):
        f.writer.append(rnd, [f.update(rnd, i, base=before) for i in range(3)], model_before=before, model_after=after)
    assert verify(f.ledger, blobs=True).blocks == 3
