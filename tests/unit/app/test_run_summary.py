"""run.py's end-of-run hint (requests-H R6, issue 22): ``verify`` pins the demo's server key and keyring, and
``audit`` is offered for every run (``--strict`` for SecAgg+)."""

from __future__ import annotations

import json

import pytest


def _summary(tmp_path, capsys, secure_aggregation=False, keys_dir=None):
    import run

    out = tmp_path / "out"
    out.mkdir()
    uri = f"sqlite:///{tmp_path / 'no-ledger-here.db'}"
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "summary": {
                    "dataset_source": "synthetic",
                    "final_accuracy": 0.5,
                    "total_time_s": 1.0,
                    "ledger": uri,
                    "ledger_blocks": 3,
                    "ledger_entries": 6,
                    "secure_aggregation": secure_aggregation,
                }
            }
        )
    )
    overrides = {"out-dir": str(out), "dataset": "synthetic", "num-server-rounds": 2}
    if keys_dir is not None:
        overrides["keys-dir"] = str(keys_dir)
    assert run.print_summary(overrides) == 0
    return uri, out, [ln.strip() for ln in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("given", [True, False], ids=["keys-dir", "default OUT/keys"])
def test_the_hint_pins_the_server_key_and_offers_audit(tmp_path, capsys, given):
    keys = tmp_path / "k"
    uri, out, lines = _summary(tmp_path, capsys, keys_dir=keys if given else None)
    keys = keys if given else out / "keys"
    assert f"flower-chain ledger verify {uri} --server-key {keys}/server/server.pub --keys {keys}/keyring" in lines
    assert f"flower-chain ledger audit {uri}" in lines
    assert not any(ln == f"flower-chain ledger verify {uri}" for ln in lines), "an unpinned verify trusts the genesis"


def test_a_secagg_run_is_audited_strictly(tmp_path, capsys):
    uri, _, lines = _summary(tmp_path, capsys, secure_aggregation=True, keys_dir=tmp_path / "k")
    assert f"flower-chain ledger audit --strict {uri}" in lines and f"flower-chain ledger audit {uri}" not in lines
