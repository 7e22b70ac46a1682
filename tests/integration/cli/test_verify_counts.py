"""`ledger verify`'s result line counts train and evaluate replies apart (issue 22: counts were train-only)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flower_chain.cli import app
from tests.support.evaluated_run import evaluated_run

pytestmark = pytest.mark.usefixtures("task_identity")


def test_the_verified_line_counts_train_and_evaluate(tmp_path):
    run = evaluated_run(tmp_path, rounds=2)  # 3 keyed clients and one keyless node, train and evaluate
    r = CliRunner().invoke(app, ["ledger", "verify", run.uri, "--server-key", str(run.server_pub)])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("VERIFIED"))
    assert "train: 6 accepted, 2 rejected; evaluate: 6 accepted, 2 rejected;" in line, line
