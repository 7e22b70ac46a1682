"""`ledger audit` on a SecAgg+ ledger: its rounds are audited from the protocol transcript (audit_secagg), the
plain replay leaves them alone (no plaintext update, yet the model changes), and a substituted aggregate fails."""

from __future__ import annotations

import pytest

from flower_chain.audit.replay import audit
from flower_chain.ledger import open_ledger
from tests.integration.audit.test_audit import cli
from tests.support import dishonest
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def secagg_uri(tmp_path):
    uri = f"sqlite:///{tmp_path}/secagg.db"
    fed = SecAggFederation(uri, n=5, shapes=[(20, 10), (10,)])
    fed.run_round(1)
    fed.run_round(2)
    fed.strategy.close()
    return uri, fed.server_key


def test_the_plain_replay_leaves_secagg_rounds_to_the_transcript_audit(secagg_uri):
    uri, _ = secagg_uri
    with open_ledger(uri) as led:
        rep = audit(led)
    assert rep.secagg_blocks == 2 and not rep.mismatches and not rep.not_rederived and rep.audited


def test_secagg_rounds_are_audited_from_the_transcript(secagg_uri):
    uri, _ = secagg_uri
    r = cli("ledger", "audit", uri)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SecAgg+: 2 round(s) audited from the transcript alone, all checks passed" in r.stdout
    assert "AUDITED" in r.stdout and "2 SecAgg+ rounds audited from their transcript" in r.stdout


def test_a_substituted_secagg_aggregate_fails_the_audit(secagg_uri):
    uri, key = secagg_uri

    def substitute(blocks):
        for fields, entries in blocks:
            if (
                any(getattr(e, "TYPE", "") == "secagg" and e.stage == "result" for e in entries)
                and fields["round"] == 2
            ):
                fields["model_after"] = b"\x07" * 32

    dishonest.rewrite(uri, key, substitute)
    r = cli("ledger", "audit", uri)
    assert r.returncode == 1 and "AUDITED" not in r.stdout, r.stdout + r.stderr
