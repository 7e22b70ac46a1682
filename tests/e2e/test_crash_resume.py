"""Crash suite (small count here; bench/bench_crash.py runs >= 20 trials): kill -9 the server at random
moments, the ledger verifies with no half-written block, and resume reaches the final round with the
same final model digest as an uninterrupted run (CPU, fixed seeds)."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from flower_chain.ledger import open_ledger, verify
from tests.support.crash import blocks_in, crash_run, env, run_args

ROUNDS, CLIENTS = 3, 3


def final_digest(uri: str) -> bytes:
    with open_ledger(uri) as led:
        rep = verify(led, client_signatures=True)
        return rep.model_digest, rep.last_round


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    r = subprocess.run(
        run_args(d / "out", d / "keys", d / "data", ROUNDS, CLIENTS),
        capture_output=True,
        text=True,
        env=env(),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    uri = json.loads((d / "out" / "metrics.json").read_text())["summary"]["ledger"]
    return d, final_digest(uri)


@pytest.mark.parametrize("trial", [0, 1])
def test_kill_9_then_resume_matches_uninterrupted_run(reference, tmp_path, trial):
    ref_dir, (ref_digest, ref_round) = reference
    assert ref_round == ROUNDS
    rng = random.Random(trial)
    db = tmp_path / "ledger.db"
    uri = f"sqlite:///{db}"
    args = run_args(tmp_path / "out", ref_dir / "keys", ref_dir / "data", ROUNDS, CLIENTS) + ["--ledger", uri]
    # Blocks: genesis, initial evaluation, then a train and an evaluation block per round. Killing within
    # 0.8 s of the 2nd-4th block (at most round 1 recorded) leaves rounds 2 and 3 to the resume: two
    # training rounds do not fit in 0.8 s (a round with training and evaluation takes ~1-2 s here).
    killed_at = crash_run(args, db, after_blocks=rng.randint(2, 4), extra_delay=rng.uniform(0, 0.8))
    assert killed_at != -1, "the run finished before the kill"
    with open_ledger(uri) as led:  # no half-written block: the ledger verifies as it is
        rep = verify(led, client_signatures=True)
    assert rep.blocks == blocks_in(db) and rep.last_round < ROUNDS
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env(), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    digest, last = final_digest(uri)
    assert last == ROUNDS
    assert digest == ref_digest, "the resumed run must end with the same model as the uninterrupted one"
