"""The masked vectors' blob write runs off the round's critical path, never past the result block (issue 20).

The workflow stores the live nodes' masked vectors on a thread while the nodes answer stage 3 and the server
unmasks; the result block, which names their aggregate, waits for that write. A write that fails stops the
run before the result block, and the ledger left behind (commit block, no result) still verifies.
"""

from __future__ import annotations

import threading
import time

import pytest

from flower_chain.audit.secagg import audit_secagg
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.secagg import COMMIT, RESULT, SecAggEntry
from flower_chain.ledger.verify import verify
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def stages(ledger) -> list[str]:
    return [e.stage for e in map(decode_entry, ledger.entries()) if isinstance(e, SecAggEntry)]


def test_the_result_block_waits_for_a_slow_blob_write(tmp_path):
    fed = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=5, shapes=[(40, 10)])
    ledger, recorder = fed.ledger, fed.strategy.core.recorder
    put, commit_train = ledger.put_blobs, recorder.commit_train
    written = threading.Event()
    seen: list[bool] = []

    def slow_put(items):
        items = list(items)
        time.sleep(0.5)  # longer than stage 3 and the unmasking of this small round
        put(items)
        written.set()

    def watched_commit(*args, **kwargs):
        seen.append(written.is_set())
        return commit_train(*args, **kwargs)

    ledger.put_blobs, recorder.commit_train = slow_put, watched_commit
    figures = fed.run_round(1)
    assert figures["failure"] == "" and seen == [True]
    commit = next(e for e in map(decode_entry, ledger.entries()) if isinstance(e, SecAggEntry) and e.stage == COMMIT)
    assert all(ledger.has_blob(d) for d in commit.data["masked"].values())
    report = audit_secagg(ledger)
    assert report.ok, report.lines()


def test_a_failed_blob_write_stops_the_run_before_the_result_block_and_the_ledger_verifies(tmp_path):
    fed = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=5, shapes=[(40, 10)])

    def failing_put(items):
        raise LedgerError("disk full")

    fed.ledger.put_blobs = failing_put
    with pytest.raises(LedgerError, match="disk full"):
        fed.run_round(1)
    assert COMMIT in stages(fed.ledger) and RESULT not in stages(fed.ledger)
    verify(fed.ledger)  # a commit block without its result block is a ledger that verifies
