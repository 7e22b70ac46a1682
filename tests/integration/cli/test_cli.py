"""The flower-chain CLI as a user runs it: output, --json, exit codes, bad input, and the HTML report."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from flower_chain.ledger.keys import key_id, load_public

ROOT = Path(__file__).resolve().parents[3]


def cli(*args, check_rc=None):
    r = subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=300,
    )
    if check_rc is not None:
        assert r.returncode == check_rc, (r.returncode, r.stdout, r.stderr)
    return r


@pytest.fixture
def fed(federation_factory, tmp_path):
    f = federation_factory("sqlite")
    for rnd in range(1, 4):
        f.add_round(rnd, n=3, rejected=1 if rnd == 2 else 0)
    pub = tmp_path / "server.pub"
    pub.write_bytes(
        f.server_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    f.pub = pub
    return f


def test_keys_new_and_list(tmp_path):
    r = cli("keys", "new", "--out", tmp_path / "k", "--name", "client-0", check_rc=0)
    priv, pub = tmp_path / "k" / "client-0.key", tmp_path / "k" / "client-0.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    kid = key_id(load_public(pub))
    assert r.stdout.startswith(kid)
    cli("keys", "new", "--out", tmp_path / "k", "--name", "client-0", check_rc=2)  # no silent overwrite
    listed = json.loads(cli("keys", "list", tmp_path / "k", "--json", check_rc=0).stdout)
    assert listed == [{"key_id": kid, "name": "client-0", "path": str(pub)}]
    cli("keys", "list", tmp_path / "nope", check_rc=2)


def test_summary_blocks_show_export(fed, tmp_path):
    s = json.loads(cli("ledger", "summary", fed.uri, "--json", check_rc=0).stdout)
    assert (s["rounds"], s["accepted"], s["rejected"], s["blocks"]) == (3, 9, 1, 4)
    assert s["reasons"] == {"bad-signature": 1} and s["federation_id"] == "fed-test"
    assert "flower-chain/fed-test" in cli("ledger", "summary", fed.uri, check_rc=0).stdout
    blocks = json.loads(cli("ledger", "blocks", fed.uri, "--from", "1", "--to", "2", "--json", check_rc=0).stdout)
    assert [(b["height"], b["round"], b["accepted"], b["rejected"]) for b in blocks] == [(1, 1, 3, 0), (2, 2, 3, 1)]
    shown = json.loads(cli("ledger", "show", fed.uri, "2", "--json", check_rc=0).stdout)
    assert [e["verdict"] for e in shown] == ["accepted"] * 3 + ["rejected"]
    assert "bad-signature" in cli("ledger", "show", fed.uri, "2", check_rc=0).stdout
    cli("ledger", "show", fed.uri, "9", check_rc=2)
    cli("ledger", "export", fed.uri, "--format", "csv", "--out", tmp_path / "x.csv", check_rc=0)
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert len(lines) == 1 + 11 and lines[0].startswith("block_height")
    rows = json.loads(cli("ledger", "export", fed.uri, "--format", "json", check_rc=0).stdout)
    assert len(rows) == 11 and rows[0]["type"] == "genesis"
    cli("ledger", "export", fed.uri, "--format", "xml", check_rc=2)


def test_verify_ok_and_failures(fed, tmp_path):
    r = cli("ledger", "verify", fed.uri, "--server-key", fed.pub, check_rc=0)
    assert "VERIFIED" in r.stdout
    assert json.loads(cli("ledger", "verify", fed.uri, "--json", check_rc=0).stdout)["verified"] is True
    other = tmp_path / "other"
    cli("keys", "new", "--out", other, "--name", "server", check_rc=0)
    r = cli("ledger", "verify", fed.uri, "--server-key", other / "server.pub", check_rc=1)
    assert "block 0" in r.stderr and "server key" in r.stderr
    ring = tmp_path / "ring"  # a keyring holds public keys only
    ring.mkdir()
    cli("keys", "new", "--out", other, "--name", "client-x", check_rc=0)
    shutil.copy(other / "client-x.pub", ring)
    r = cli("ledger", "verify", fed.uri, "--keys", ring, check_rc=1)
    assert "lacks keys" in r.stderr and "allows keys" in r.stderr  # both directions
    for i, k in enumerate(fed.client_keys):
        (ring / f"client-{i}.pub").write_bytes(
            k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    r = cli("ledger", "verify", fed.uri, "--keys", ring, check_rc=1)
    assert "lacks keys " + key_id(load_public(ring / "client-x.pub")) in r.stderr and "allows keys" not in r.stderr
    (ring / "client-x.pub").unlink()
    (ring / "client-0.pub").unlink()
    r = cli("ledger", "verify", fed.uri, "--keys", ring, check_rc=1)
    assert f"allows keys {key_id(fed.client_keys[0])} that are not in" in r.stderr
    shutil.copy(other / "client-x.pub", ring / "client-x.pub")
    (ring / "client-0.pub").write_bytes(
        fed.client_keys[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (ring / "client-x.pub").unlink()
    cli("ledger", "verify", fed.uri, "--keys", ring, check_rc=0)  # exactly the genesis keyring
    fed.ledger.close()
    db = sqlite3.connect(fed.uri[len("sqlite:///") :])
    db.execute("UPDATE entries SET data = CAST(data || x'00' AS BLOB) WHERE idx = 6")
    db.commit()
    db.close()
    r = cli("ledger", "verify", fed.uri, "--json", check_rc=1)
    doc = json.loads(r.stdout)
    assert doc["verified"] is False and doc["height"] == 2 and doc["entry"] in (2, None), doc  # entry or its node


def test_prove_and_verify_offline(fed, tmp_path):
    from flower_chain.ledger.checkpoint import verifier_key

    kid = key_id(fed.client_keys[1])
    proof = tmp_path / "p.txt"
    cli("ledger", "prove", fed.uri, "--round", "2", "--client", kid, "--out", proof, check_rc=0)
    text = proof.read_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ") and "\nindex " in text
    r = cli("proof", "verify", proof, "--server-key", fed.pub, check_rc=0)
    assert f"client {kid}, round 2" in r.stdout
    vkey = verifier_key("flower-chain/fed-test", fed.server_key.public_key())
    cli("proof", "verify", proof, "--server-key", vkey, check_rc=0)
    # mutations: another entry, another index, a damaged hash, another log, another key
    lines = text.split("\n")
    bad_index = "\n".join(ln if not ln.startswith("index ") else f"index {int(ln[6:]) + 1}" for ln in lines)
    (tmp_path / "b1").write_text(bad_index)
    cli("proof", "verify", tmp_path / "b1", "--server-key", fed.pub, check_rc=1)
    hash_line = next(i for i, ln in enumerate(lines) if i > 2 and ln)
    lines2 = list(lines)
    lines2[hash_line] = ("A" if lines2[hash_line][0] != "A" else "B") + lines2[hash_line][1:]
    (tmp_path / "b2").write_text("\n".join(lines2))
    cli("proof", "verify", tmp_path / "b2", "--server-key", fed.pub, check_rc=1)
    other = tmp_path / "o"
    cli("keys", "new", "--out", other, "--name", "server", check_rc=0)
    r = cli("proof", "verify", proof, "--server-key", other / "server.pub", check_rc=1)
    assert "checkpoint" in r.stderr
    (tmp_path / "garbage").write_text("hello\n")
    cli("proof", "verify", tmp_path / "garbage", "--server-key", fed.pub, check_rc=1)
    cli("proof", "verify", tmp_path / "missing", "--server-key", fed.pub, check_rc=2)
    cli("ledger", "prove", fed.uri, "--round", "2", "--client", "0000000000000000", check_rc=2)
    cli("ledger", "prove", fed.uri, "--round", "7", "--client", kid, check_rc=2)


def test_consistency_and_checkpoint(fed, tmp_path):
    cp = cli("ledger", "checkpoint", fed.uri, check_rc=0).stdout
    assert cp.splitlines()[:2] == ["flower-chain/fed-test", "11"]
    c = tmp_path / "c.json"
    cli("ledger", "consistency", fed.uri, "--from", "4", "--out", c, check_rc=0)
    assert "extends the log at size 4" in cli("proof", "verify", c, "--server-key", fed.pub, check_rc=0).stdout
    doc = json.loads(c.read_text())
    doc["proof"][0] = doc["proof"][1]
    c.write_text(json.dumps(doc))
    cli("proof", "verify", c, "--server-key", fed.pub, check_rc=1)
    cli("ledger", "consistency", fed.uri, "--from", "5", check_rc=2)  # not a block boundary


def test_proof_for_a_different_log_fails(fed, federation_factory, tmp_path):
    other = federation_factory("sqlite", federation_id="fed-other")
    other.server_key = fed.server_key  # same server key, another log: proof must not verify against it
    kid = key_id(fed.client_keys[0])
    proof = tmp_path / "p.txt"
    cli("ledger", "prove", fed.uri, "--round", "1", "--client", kid, "--out", proof, check_rc=0)
    other_cp = cli("ledger", "checkpoint", other.uri, check_rc=0).stdout
    text = proof.read_text()
    head, _, _ = text.partition("\n\n")
    (tmp_path / "swapped").write_text(head + "\n\n" + other_cp)
    cli("proof", "verify", tmp_path / "swapped", "--server-key", fed.pub, check_rc=1)


@pytest.mark.parametrize(
    "make,code",
    [
        (lambda d: d / "missing.db", 2),
        (lambda d: d, 2),
        (lambda d: (d / "other.db").write_text("not sqlite at all, just text") or d / "other.db", 2),
        (lambda d: (d / "empty.jsonl").write_text("") or d / "empty.jsonl", 2),
    ],
)
def test_bad_ledger_inputs(tmp_path, make, code):
    target = make(tmp_path)
    for cmd in (["ledger", "summary"], ["ledger", "verify"], ["ledger", "blocks"]):
        r = cli(*cmd, target, check_rc=code)
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_truncated_jsonl_ledger_fails_verification(federation_factory):
    f = federation_factory("jsonl")
    f.add_round(1)
    f.add_round(2)
    path = Path(f.uri[len("jsonl:///") :])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    r = cli("ledger", "verify", f.uri, check_rc=1)
    assert "torn" in r.stderr
    cli("ledger", "repair", f.uri, check_rc=0)
    cli("ledger", "verify", f.uri, check_rc=0)


def test_unknown_uri_scheme():
    r = cli("ledger", "summary", "postgres://db/x", check_rc=2)
    assert "unknown ledger scheme" in r.stderr


def test_revoke_appends_a_revocation(fed, tmp_path):
    priv = tmp_path / "server.key"
    priv.write_bytes(
        fed.server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    kid = key_id(fed.client_keys[2])
    fed.ledger.close()
    cli("keys", "revoke", fed.uri, kid, "--server-key", priv, check_rc=0)
    cli("ledger", "verify", fed.uri, check_rc=0)
    rows = json.loads(cli("ledger", "export", fed.uri, "--format", "json", check_rc=0).stdout)
    assert rows[-1]["type"] == "revocation" and rows[-1]["key_id"] == kid
    cli("keys", "revoke", fed.uri, "ffffffffffffffff", "--server-key", priv, check_rc=2)
    # another server key: a clear input error, nothing appended
    other = tmp_path / "other.key"
    cli("keys", "new", "--out", tmp_path, "--name", "other", check_rc=0)
    n = json.loads(cli("ledger", "summary", fed.uri, "--json", check_rc=0).stdout)["blocks"]
    r = cli("keys", "revoke", fed.uri, key_id(fed.client_keys[1]), "--server-key", other, check_rc=2)
    assert "pass the ledger's own server key" in r.stderr
    assert json.loads(cli("ledger", "summary", fed.uri, "--json", check_rc=0).stdout)["blocks"] == n


def test_revoke_needs_no_flwr(fed, tmp_path):
    """Revocation is the ledger writer's: the CLI command runs where flwr cannot be imported."""
    priv = tmp_path / "server.key"
    priv.write_bytes(
        fed.server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    fed.ledger.close()
    code = (
        "import sys; sys.modules['flwr'] = None; sys.modules['torch'] = None\n"
        "from flower_chain.cli import main; sys.argv = ['flower-chain', *sys.argv[1:]]; main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "keys", "revoke", fed.uri, key_id(fed.client_keys[0]), "--server-key", str(priv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    cli("ledger", "verify", fed.uri, check_rc=0)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_matches_the_ledger_and_renders(fed, tmp_path):
    from flower_chain.audit.report import collect
    from flower_chain.ledger import EvaluationEntry

    for rnd, acc in ((1, 0.5), (2, 0.7), (3, 0.9)):
        fed.add_block(
            rnd,
            [
                EvaluationEntry(
                    round=rnd, source="centralized", num_replies=0, metrics={"accuracy": acc, "loss": 1 - acc}
                )
            ],
        )
    dest = tmp_path / "report.html"
    cli("report", fed.uri, "-o", dest, "--png", tmp_path / "png", check_rc=0)
    html = dest.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained
    assert html.count("data:image/png;base64,") == 4 and len(list((tmp_path / "png").glob("*.png"))) == 4
    assert "VERIFIED" in html and "flower-chain/fed-test" in html
    data = collect(fed.ledger)
    assert {r: v["accuracy"] for r, v in data["central"].items()} == {1: 0.5, 2: 0.7, 3: 0.9}
    assert data["verdicts"] == {1: {"accepted": 3}, 2: {"accepted": 3, "bad-signature": 1}, 3: {"accepted": 3}}
    assert sum(v.get("accepted", 0) for v in data["participation"].values()) == 9
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the screenshot part cannot run")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            dest.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists()
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and img.std() > 0.05, "the screenshot is blank"
    green = ((img[..., 0] < 0.3) & (img[..., 1] > 0.4) & (img[..., 2] < 0.3)).mean()
    assert green > 0.001, "the verified banner / accepted bars are not visible"


def test_report_shows_a_failed_verification(fed, tmp_path):
    fed.ledger.close()
    db = sqlite3.connect(fed.uri[len("sqlite:///") :])
    db.execute("UPDATE blocks SET signature = zeroblob(64) WHERE height = 3")
    db.commit()
    db.close()
    dest = tmp_path / "r.html"
    cli("report", fed.uri, "-o", dest, check_rc=0)
    assert "NOT VERIFIED" in dest.read_text() and "block 3" in dest.read_text()


def test_keys_init_writes_a_federation_and_never_overwrites(tmp_path):
    d = tmp_path / "fed"
    doc = json.loads(cli("keys", "init", d, "--clients", "3", "--json", check_rc=0).stdout)
    assert (d / "server" / "server.key").is_file() and (d / "server" / "server.pub").is_file()
    assert stat.S_IMODE((d / "server" / "server.key").stat().st_mode) == 0o600
    for i in range(3):
        assert (d / "clients" / f"client-{i}.key").is_file()
        assert (d / "keyring" / f"client-{i}.pub").read_bytes() == (d / "clients" / f"client-{i}.pub").read_bytes()
    assert sorted(p.name for p in (d / "keyring").iterdir()) == ["client-0.pub", "client-1.pub", "client-2.pub"]
    assert [c["key_id"] for c in doc["clients"]] == [
        key_id(load_public(d / "keyring" / f"client-{i}.pub")) for i in range(3)
    ]
    from flower_chain.ledger.keys import Keyring

    assert len(Keyring.from_path(d / "keyring").keys) == 3  # usable as the server's keyring as it is
    before = (d / "server" / "server.key").read_bytes()
    r = cli("keys", "init", d, "--clients", "5", check_rc=2)
    assert r.stderr.startswith("error:") and "never overwrites" in r.stderr and "already exist" in r.stderr
    assert (d / "server" / "server.key").read_bytes() == before and not (d / "clients" / "client-3.key").exists()
    cli("keys", "init", tmp_path / "x", "--clients", "0", check_rc=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("keys", "init", blocker, "--clients", "1", check_rc=2)
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_summary_counts_train_and_evaluate_verdicts(fed):
    from flower_chain.ledger import UpdateEntry

    ev = [
        UpdateEntry(
            kind="evaluate",
            round=3,
            node_id=str(i),
            key_id="",
            verdict=v,
            reason=why,
            detail="",
            num_examples=5,
            arrays_digest=b"",
            metrics={},
            statement=b"",
            signature=b"",
        )
        for i, (v, why) in enumerate([("accepted", "ok"), ("accepted", "ok"), ("rejected", "unsigned")])
    ]
    fed.writer.append(
        3, ev, model_before=fed.writer.head.header.model_after, model_after=fed.writer.head.header.model_after
    )
    s = json.loads(cli("ledger", "summary", fed.uri, "--json", check_rc=0).stdout)
    assert (s["accepted"], s["rejected"], s["evaluate_accepted"], s["evaluate_rejected"]) == (9, 1, 2, 1)
    assert s["verdicts"] == {"train": {"ok": 9, "bad-signature": 1}, "evaluate": {"ok": 2, "unsigned": 1}}
    text = cli("ledger", "summary", fed.uri, check_rc=0).stdout
    assert "train replies" in text and "9 accepted, 1 rejected (bad-signature 1)" in text
    assert "evaluate replies" in text and "2 accepted, 1 rejected (unsigned 1)" in text


def test_verify_reports_verdicts_rederivation_and_blobs(fed):
    from flower_chain.ledger import UpdateEntry

    err_entry = UpdateEntry(
        kind="train",
        round=4,
        node_id="9",
        key_id="",
        verdict="rejected",
        reason="client-error",
        detail="boom",
        num_examples=-1,
        arrays_digest=b"",
        metrics={},
        statement=b"",
        signature=b"",
    )
    fed.writer.append(
        4, [err_entry], model_before=fed.writer.head.header.model_after, model_after=fed.writer.head.header.model_after
    )
    doc = json.loads(cli("ledger", "verify", fed.uri, "--json", check_rc=0).stdout)
    assert {"kind": "train", "reason": "client-error", "count": 1} in doc["verdicts"]
    assert doc["not_rederived"] == {"client-error": 1} and doc["equivocating_keys"] == []
    r = cli("ledger", "verify", fed.uri, check_rc=0)
    assert "not re-derivable from the ledger: client-error 1" in r.stdout
    assert f"of {doc['accepted']} accepted updates: add --blobs" in r.stdout  # what was not checked, said
    r = cli("ledger", "verify", fed.uri, "--strict", check_rc=1)
    assert "not re-derivable" in r.stderr
    assert json.loads(cli("ledger", "verify", fed.uri, "--strict", "--json", check_rc=1).stdout)["verified"] is False
    # the synthetic ledger names models it never stored: listed with --blobs, a failure with --strict
    doc = json.loads(cli("ledger", "verify", fed.uri, "--blobs", "--json", check_rc=0).stdout)
    assert doc["blobs_checked"] is True and any("is not in the blob store" in p for p in doc["blob_problems"])
    r = cli("ledger", "verify", fed.uri, "--blobs", check_rc=0)
    assert "BLOB block 1: model_after" in r.stderr
    assert "accepted updates whose arrays are not stored (--strict fails on this)" in r.stdout
    r = cli("ledger", "verify", fed.uri, "--blobs", "--strict", check_rc=1)
    assert "blobs are missing" in r.stderr
    # an altered blob is a failure without --strict
    from flower_chain.ledger.arrays import encode_arrays
    from tests.support import dishonest

    digest = fed.ledger.head().header.model_after
    fed.ledger.close()
    dishonest.put_blob(fed.uri, digest, encode_arrays([("w", np.zeros(3, np.float32))]))
    r = cli("ledger", "verify", fed.uri, "--blobs", check_rc=1)
    assert "does not match its digest" in r.stderr


def test_verify_anchor_options_need_an_anchor(fed):
    r = cli("ledger", "verify", fed.uri, "--owner", "0x" + "11" * 20, check_rc=2)
    assert r.stderr.startswith("error:") and "--anchor" in r.stderr
    r = cli("ledger", "verify", fed.uri, "--anchor", "evm+http://127.0.0.1:1", check_rc=2)
    assert "--contract" in r.stderr
