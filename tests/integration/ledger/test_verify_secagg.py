"""verify on a SecAgg+ ledger: a successful result block changes the model without a plaintext update; verify
accepts it only as a SecAgg+ round, says it did not check the aggregate (the audit replays it), and still refuses
the same model change in a block without that result."""

from __future__ import annotations

import pytest

from flower_chain.ledger import verify
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.writer import LedgerWriter
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def test_a_secagg_round_verifies_and_is_reported_unchecked(tmp_path):
    fed = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=4, shapes=[(20, 10), (10,)])
    assert fed.run_round(1)["failure"] == ""
    report = verify(fed.ledger, client_signatures=True)
    assert report.secagg_rounds == 1
    # the same kind of model change, in a block that holds no SecAgg+ result, is refused as before
    writer = LedgerWriter(fed.ledger, fed.server_key)
    head = writer.head.header
    writer.append(head.round + 1, [], model_before=head.model_after, model_after=bytes(32))
    with pytest.raises(VerificationError, match="accepts no train update but changes the model"):
        verify(fed.ledger)
