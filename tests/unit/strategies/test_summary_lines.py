"""The end-of-run summary names every kind of judged reply, SecAgg+ stage replies included."""

from __future__ import annotations

from collections import Counter

from flower_chain.strategies.options import LedgerOptions
from flower_chain.strategies.summary import summary_lines


def test_secagg_stage_replies_have_their_own_line():
    verdicts = Counter({("secagg", "ok"): 18, ("secagg", "no-reply"): 2, ("train", "ok"): 3})
    opts = LedgerOptions(ledger="memory:", keyring={}, server_key="server.key")
    lines = summary_lines("fed", "memory:", 3, 30, verdicts, opts)
    assert "  train replies: 3 accepted, 0 rejected" in lines
    assert "  secagg stage replies: 18 accepted, 2 rejected (no-reply 2)" in lines
    assert not any("no replies were judged" in x for x in lines)
