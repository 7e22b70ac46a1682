"""``run.py --secure-aggregation`` through ``flwr run``: SecAgg+ with two dropouts, audited, and no plaintext stored.

Six simulated nodes on a local SuperLink of their own (the demo's own wiring, ``run.run_simulation``), one
round: partition 1 fails stage 0 (setup) and partition 3 trains, masks and signs its input in stage 2, then
loses the reply (run config ``secagg-drop``). Each node saves the plaintext model it trained to a test-only
directory (``secagg-plaintext-dir``): the test knows every update, the ledger must not. The round must
complete with the four live inputs, ``flower-chain ledger audit --strict`` must re-derive it from the
transcript, and no blob in the ledger's store may equal or correlate with any node's plaintext model or
update; the only models stored are the global ones (before and after), and the one after is the weighted
average of exactly the four live inputs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import quantize

from flower_chain.audit.secagg_transcript import read_rounds
from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import array_digest, decode_arrays
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.keys import key_id, load_public
from flower_chain.ledger.secagg_masks import neighbour_graph

ROOT = Path(__file__).resolve().parents[2]
NODES, STAGE0_DROP, STAGE2_DROP = 6, 1, 3
LIVE = [p for p in range(NODES) if p not in (STAGE0_DROP, STAGE2_DROP)]
MAX_CORRELATION = 0.02  # |r| of independent vectors of ~185k elements: about 0.0023 (one sigma)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="1000"),
    )


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    import run  # noqa: PLC0415 - the demo's own entry point (run.py at the repository root)

    d = tmp_path_factory.mktemp("secagg")
    args = run.parse_args(
        [
            "--secure-aggregation",
            "--num-clients",
            str(NODES),
            "--rounds",
            "1",
            "--batch-size",
            "64",
            "--out",
            str(d / "out"),
            "--data-dir",
            str(d / "data"),
        ]
    )
    overrides = run.validate(args)
    overrides.update(
        {"secagg-drop": f"setup:{STAGE0_DROP} masked-input:{STAGE2_DROP}", "secagg-plaintext-dir": str(d / "plaintext")}
    )
    old = os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    try:
        rc = run.run_simulation(overrides, NODES, verbose=False)
    finally:
        if old is None:
            os.environ.pop("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", None)
    out = d / "out"
    log = (out / "flwr-run.log").read_text(errors="replace") if (out / "flwr-run.log").exists() else ""
    assert rc == 0, log[-6000:]
    doc = json.loads((out / "metrics.json").read_text())
    return d, out, doc, log


def _plaintexts(d: Path) -> dict[int, tuple[list[np.ndarray], list[np.ndarray]]]:
    """partition -> (trained model arrays, update = model - base) as the node saved them."""
    got = {}
    for f in sorted((d / "plaintext").glob("round1-partition*.npz")):
        with np.load(f) as z:
            names = [k[len("model.") :] for k in z.files if k.startswith("model.")]
            model = [z[f"model.{n}"] for n in names]
            got[int(f.stem.rsplit("partition", 1)[1])] = (model, [m - z[f"base.{n}"] for m, n in zip(model, names)])
    return got


def _blobs(uri: str) -> list[tuple[bytes, bytes]]:
    """Every blob in the SQLite file, read from the table itself (not through the ledger's API)."""
    path = uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return [(bytes(d), bytes(b)) for d, b in conn.execute("SELECT digest, data FROM blobs")]


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def test_the_round_completes_without_the_two_dropouts(secagg_run):
    d, out, doc, _log = secagg_run
    assert [row["round"] for row in doc["rounds"]] == [0, 1]
    assert doc["rounds"][1]["accepted"] == len(LIVE)  # the live masked inputs that were unmasked together
    assert doc["rounds"][1]["accuracy"] > doc["rounds"][0]["accuracy"]
    assert doc["summary"]["secure_aggregation"]["failed_rounds"] == []
    assert (out / "model.npz").exists()
    # the stage-0 dropout never trained; the stage-2 dropout trained and masked, then its reply was lost
    assert sorted(_plaintexts(d)) == sorted([*LIVE, STAGE2_DROP])


def test_the_transcript_names_both_dropouts(secagg_run):
    _d, out, doc, _log = secagg_run
    kid = {key_id(load_public(out / "keys" / "keyring" / f"client-{p}.pub")): p for p in range(NODES)}
    with open_ledger(doc["summary"]["ledger"]) as led:
        rounds = read_rounds(led, [])
    t = rounds[1]
    node_of = {kid[r.entry.key_id]: n for n, r in t.accepted("setup").items()}
    assert sorted(node_of) == [p for p in range(NODES) if p != STAGE0_DROP]
    (stage0,) = [r for r in t.records["setup"] if r.entry.verdict != "accepted"]
    assert stage0.entry.reason == "client-error" and stage0.entry.node_id not in node_of.values()
    (stage2,) = [r for r in t.records["masked-input"] if r.entry.verdict != "accepted"]
    assert stage2.entry.reason == "client-error" and stage2.entry.node_id == node_of[STAGE2_DROP]
    assert sorted(t.commit["live"]) == sorted(node_of[p] for p in LIVE)
    assert t.commit["dropped"] == [node_of[STAGE2_DROP]]  # the stage-0 dropout is in neither list
    assert not t.result["failure"] and sorted(t.result["live"]) == sorted(t.commit["live"])
    unmask = t.accepted("unmask")
    assert sorted(unmask) == sorted(t.commit["live"])
    h = t.header
    graph = neighbour_graph(h["sampled"], h["params"]["num_shares"], h["graph_seed"])
    dropped = node_of[STAGE2_DROP]
    for n, rec in unmask.items():  # the dropped node's key shares come from its neighbours; its seed never
        assert set(rec.statement.reply["key_shares"]) == ({dropped} if dropped in graph[n] else set())
        assert dropped not in rec.statement.reply["seed_shares"]
    assert sum(dropped in rec.statement.reply["key_shares"] for rec in unmask.values()) >= h["params"]["threshold"]


def test_audit_strict_re_derives_the_round_from_the_transcript(secagg_run):
    _d, out, doc, _log = secagg_run
    uri = doc["summary"]["ledger"]
    r = cli("ledger", "audit", "--strict", uri)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        f"aggregate = sum of {len(LIVE)} signed masked inputs (1 dropped in stage 2, 0 in stage 1, 1 in stage 0)"
    ) in r.stdout
    assert "no individual update was revealed" in r.stdout and "AUDITED" in r.stdout
    keys = out / "keys"
    v = cli(
        "ledger", "verify", uri, "--server-key", str(keys / "server" / "server.pub"), "--keys", str(keys / "keyring")
    )
    assert v.returncode == 0 and "VERIFIED" in v.stdout, v.stdout + v.stderr


def test_no_stored_blob_equals_or_correlates_with_a_plaintext_update(secagg_run):
    d, _out, doc, _log = secagg_run
    plain = _plaintexts(d)
    uri = doc["summary"]["ledger"]
    with open_ledger(uri) as led:
        t = read_rounds(led, [])[1]
        blocks = list(led.blocks())
    global_models = {b.header.model_before for b in blocks} | {b.header.model_after for b in blocks}
    masked = set(t.commit["masked"].values())
    arrays_seen = {"global": 0, "masked": 0}
    for digest, data in _blobs(uri):
        try:
            named = decode_arrays(data)
        except EncodingError:
            assert len(data) < 4096, f"blob {digest.hex()[:16]}: {len(data)} bytes that are no array stream"
            continue
        assert array_digest(named) == digest
        arrays = [a for _, a in named]
        if digest in masked:
            arrays_seen["masked"] += 1
            arrays = arrays[1:]  # array "0" is the masked weight
            assert all(a.dtype == np.uint32 for a in arrays)
        else:
            assert digest in global_models, f"blob {digest.hex()[:16]} is neither a global model nor a masked input"
            arrays_seen["global"] += 1
        flat = _flat(arrays)
        for p, (model, update) in plain.items():
            for secret in (model, update):
                assert not any(
                    a.shape == s.shape and np.array_equal(a, s) for a in arrays for s in secret if s.size > 16
                ), f"blob {digest.hex()[:16]} holds an array of partition {p}"
                if digest in masked:  # a global model is the public average; a masked input must look random
                    r = np.corrcoef(flat, _flat(secret))[0, 1]
                    assert abs(r) < MAX_CORRELATION, f"masked input {digest.hex()[:16]} ~ partition {p}: r={r:.4f}"
    assert arrays_seen == {"global": 2, "masked": len(LIVE)}  # the lost reply of partition 3 never reached it
    for _p, (model, update) in plain.items():  # the check has power: an unmasked quantized input is caught
        for secret in (model, update):
            quantized = quantize([np.asarray(a, np.float64) for a in secret], 8.0, 4194304)
            assert np.corrcoef(_flat(quantized), _flat(secret))[0, 1] > 0.9


def test_the_new_model_is_the_weighted_average_of_exactly_the_live_inputs(secagg_run):
    d, out, _doc, _log = secagg_run
    plain = _plaintexts(d)
    sizes = {p: _partition_size(out, p) for p in plain}
    q = {p: round(n / 1000.0 * 4194304) / 4194304 for p, n in sizes.items()}  # Flower's quantized weights
    with np.load(out / "model.npz") as z:
        final = _flat([z[k] for k in z.files])

    def average(parts):
        return sum(q[p] * _flat(plain[p][0]) for p in parts) / sum(q[p] for p in parts)

    live = average(LIVE)
    assert np.max(np.abs(final - live)) < 1e-4  # quantization only
    assert np.max(np.abs(final - average([*LIVE, STAGE2_DROP]))) > 1e-3  # the lost input is not in it
    for p in plain:
        assert np.max(np.abs(final - _flat(plain[p][0]))) > 1e-3


def _partition_size(out: Path, p: int) -> int:
    from flower_chain.app import data as data_mod  # noqa: PLC0415

    cfg = json.loads((out / "metrics.json").read_text())["config"]
    part = data_mod.load_partition(
        cfg["dataset"],
        p,
        NODES,
        data_dir=cfg["data-dir"],
        partition=cfg["partition"],
        alpha=float(cfg["alpha"]),
        seed=int(cfg["seed"]),
    )
    return len(part.x_train)
