"""`flower-chain report` of a real in-process run, rendered in headless Chromium: status first (green only with a
pinned key, AUDITED only after a replay), federated and centralized metrics labelled, verdicts train and
evaluate, clients by name; a ledger that does not verify is red with the reason."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from flower_chain.audit.report import _figures, collect, verdict_colour
from flower_chain.audit.status import keyring_names, ledger_status
from flower_chain.ledger import open_ledger
from flower_chain.ledger.keys import raw_public
from tests.support.evaluated_run import evaluated_run, federated_acc

pytestmark = pytest.mark.usefixtures("task_identity")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="200"),
    )


def chromium(url: str, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
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
            *extra,
            url,
        ],
        capture_output=True,
        timeout=120,
    )


def colour_share(img, hex_colour: str, region=(slice(None), slice(None)), tol=0.06) -> float:
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    sub = img[region]
    return float(
        (
            (abs(sub[..., 0] - rgb[0]) < tol) & (abs(sub[..., 1] - rgb[1]) < tol) & (abs(sub[..., 2] - rgb[2]) < tol)
        ).mean()
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0
    try:
        return evaluated_run(tmp_path_factory.mktemp("run"))
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def test_report_of_a_real_run_pinned_and_audited(run, tmp_path):
    dest = tmp_path / "r.html"
    r = cli("report", run.uri, "-o", dest, "--server-key", run.server_pub, "--keys", run.keyring, "--audit")
    assert r.returncode == 0 and "VERIFIED, AUDITED" in r.stdout, r.stdout + r.stderr
    doc = dest.read_text()
    assert doc.index('id="status"') < doc.index("<h2>Training") < doc.index("<h2>Verdicts") < doc.index("<h2>Clients")
    status = re.search(r'<p class="status" id="status" style="background:(#\w+)">([^<]*)</p>', doc)
    assert status.groups() == ("#2e7d32", "VERIFIED")
    assert re.search(r'id="audit-status"[^>]*>AUDITED: 3 of 3 train rounds re-derived', doc)
    assert "client-0 (" in doc and "unsigned (node 14)" in doc
    assert "train replies: 9 accepted, 3 rejected (unsigned 3); evaluate replies: 9 accepted, 3 rejected" in doc
    assert "<details" in doc and '<pre id="data">' not in doc  # no raw JSON dump, the checkpoint is collapsed
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the rendering cannot be checked")
    shot = tmp_path / "shot.png"
    chromium(dest.as_uri(), tmp_path, "--window-size=1200,1400", f"--screenshot={shot}")
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert colour_share(img, "#2e7d32", (slice(60, 140), slice(None))) > 0.3, "no green VERIFIED banner at the top"
    # the federated accuracy curve (matplotlib's first colour) in the training plot, below the status
    assert colour_share(img, "#1f77b4", (slice(400, 1000), slice(0, 600))) > 0.001, "no federated accuracy curve"
    dom = chromium(dest.as_uri(), tmp_path, "--dump-dom").stdout.decode()
    assert "eval_acc: federated" not in dom  # the legend is in the PNG; the table names the metric and its source
    assert re.search(r"<th>eval_acc<br><small>federated</small></th>", dom)
    last = sum(federated_acc(3, i) * (10 + i) for i in range(3)) / 33  # the example-weighted mean of round 3
    assert f"<td>3</td><td>{last:.4g}</td>" in dom


def test_numbers_match_the_ledger(run):
    with open_ledger(run.uri) as led:
        data = collect(led, names=keyring_names(run.keyring))
    # federated eval_acc: the example-weighted mean of the three signed replies
    want = {r: sum(federated_acc(r, i) * (10 + i) for i in range(3)) / 33 for r in (1, 2, 3)}
    assert {r: v["eval_acc"] for r, v in data["federated"].items()} == pytest.approx(want)
    assert {r: v["accuracy"] for r, v in data["central"].items()} == pytest.approx({1: 0.49, 2: 0.63, 3: 0.77})
    assert data["verdicts"] == data["evaluate_verdicts"] == {r: {"accepted": 3, "unsigned": 1} for r in (1, 2, 3)}
    assert sorted(data["clients"]) == [
        *(
            f"client-{i} ({k[:8]})"
            for i, k in enumerate(sorted(keyring_names(run.keyring), key=keyring_names(run.keyring).get))
        ),
        "unsigned (node 14)",
    ]
    assert sorted(data["round_durations"]) == [1, 2, 3]  # round 1 too (from the genesis: includes start-up)


def test_without_a_pinned_key_the_banner_is_not_green_and_says_what_was_not_checked(run, tmp_path):
    dest = tmp_path / "r.html"
    assert cli("report", run.uri, "-o", dest).returncode == 0
    doc = dest.read_text()
    status = re.search(r'<p class="status" id="status" style="background:(#\w+)">([^<]*)</p>', doc)
    assert status.groups() == ("#b26a00", "VERIFIED (server key not pinned)")
    assert "NOT AUDITED" in doc and "the server key was not pinned" in doc and "(--witness)" in doc
    # a wrong pinned key: red, with the reason
    with open_ledger(run.uri) as led:
        st = ledger_status(led, server_key=raw_public(run.clients.keys[0]))
    assert not st.verified and st.level == "failed" and "server key" in st.reason


def test_a_ledger_that_does_not_verify_is_red_with_the_reason(run, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copy(run.uri[len("sqlite:///") :], copy)
    db = sqlite3.connect(copy)
    db.execute("UPDATE blocks SET signature = zeroblob(64) WHERE height = 2")
    db.commit()
    db.close()
    dest = tmp_path / "r.html"
    cli("report", f"sqlite:///{copy}", "-o", dest, "--server-key", run.server_pub, "--audit")
    doc = dest.read_text()
    status = re.search(r'<p class="status" id="status" style="background:(#\w+)">([^<]*)</p>', doc)
    assert status.group(1) == "#c62828" and status.group(2).startswith("NOT VERIFIED: ") and "block 2" in doc
    assert '#2e7d32">VERIFIED' not in doc


def test_plots_have_integer_round_ticks_one_colour_per_verdict_and_no_empty_axes(run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from flower_chain.audit import report

    with open_ledger(run.uri) as led:
        data = collect(led)
    fig = report._training_figure(plt, data)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    report._stacked(axes[0], data["verdicts"], "train")
    report._stacked(axes[1], data["evaluate_verdicts"], "evaluate")
    colours = [{h.get_label(): tuple(np.round(h.patches[0].get_facecolor(), 3)) for h in ax.containers} for ax in axes]
    assert colours[0] == colours[1] and set(colours[0]) == {"accepted", "unsigned"}
    assert colours[0]["unsigned"] != colours[0]["accepted"]
    assert verdict_colour("unsigned") != verdict_colour("bad-signature")
    plt.close(fig)
    empty = {**data, "central": {}, "federated": {}}
    fig = report._training_figure(plt, empty)
    assert all(any(t.get_text().startswith("no data") for t in ax.texts) for ax in fig.axes)
    plt.close(fig)
    assert len(_figures(empty)) == 4
    many = {
        **data,
        "participation": {f"k{i:03d}": {"accepted": 1, **({"unsigned": 1} if i % 7 == 0 else {})} for i in range(100)},
    }
    captured = {}
    real = report._stacked

    def spy(ax, per, title, keys=None):
        if keys is not None:
            captured["keys"], captured["title"] = keys, title
        real(ax, per, title, keys)

    report._stacked = spy
    try:
        _figures(many)
    finally:
        report._stacked = real
    assert len(captured["keys"]) == report.MAX_CLIENT_BARS and "40 of 100 clients" in captured["title"]
    assert {f"k{i:03d}" for i in range(0, 100, 7)} <= set(captured["keys"])  # every client with a rejection


def test_a_keyring_that_differs_or_an_unwitnessed_head_is_not_verified(run, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger.cosignature import cosigner_verifier_key

    other = tmp_path / "keyring"
    other.mkdir()
    for f in run.keyring.glob("*.pub"):
        (other / f.name).write_bytes(f.read_bytes())
    (other / "stranger.pub").write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    dest = tmp_path / "r.html"
    cli("report", run.uri, "-o", dest, "--server-key", run.server_pub, "--keys", other)
    doc = dest.read_text()
    assert 'id="status" style="background:#c62828">NOT VERIFIED: the genesis keyring differs' in doc
    vkey = cosigner_verifier_key("w.example/w1", Ed25519PrivateKey.generate().public_key())
    cli("report", run.uri, "-o", dest, "--server-key", run.server_pub, "--witness", vkey)
    doc = dest.read_text()
    assert 'id="status" style="background:#c62828">NOT VERIFIED: witness cosignatures: NOT witnessed' in doc
    for bad in (
        ["--witness", "not-a-vkey"],
        ["--witness-quorum", "2"],
        ["--witness", vkey, "--witness-quorum", "3"],
        ["--keys", tmp_path / "nowhere"],
    ):
        r = cli("report", run.uri, "-o", dest, *bad)
        assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, (bad, r.stderr)


def test_a_recorded_key_id_cannot_pass_for_another_client(federation_factory):
    from flower_chain.ledger import UpdateEntry

    fed = federation_factory("sqlite")
    real = fed.update(1, 0)
    names = {real.key_id: "alice"}
    spoofs = ("", "unsigned (node 14)", f"alice ({real.key_id[:8]})")
    entries = [
        UpdateEntry(
            kind="train",
            round=1,
            node_id="14" if not kid else "5",
            key_id=kid,
            verdict="rejected",
            reason="unsigned",
            detail="",
            num_examples=-1,
            arrays_digest=b"",
            metrics={},
            statement=b"",
            signature=b"",
        )
        for kid in spoofs
    ]
    fed.writer.append(1, [*entries, real], model_before=bytes(32), model_after=bytes.fromhex("11" * 32))
    part = collect(fed.ledger, names=names)["participation"]
    assert part["unsigned (node 14)"] == {"unsigned": 1} and part[f"alice ({real.key_id[:8]})"] == {"accepted": 1}
    assert part["key unsigned (node 14)"] == {"unsigned": 1} and part[f"key alice ({real.key_id[:8]})"] == {
        "unsigned": 1
    }
