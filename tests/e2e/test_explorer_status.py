"""The explorer of a real in-process run in headless Chromium: status first (VERIFIED / AUDITED computed on the
server, green only with a pinned key), the federated accuracy curve labelled as such beside the centralized one,
verdicts train and evaluate, clients by keyring name, a keyless node by its node, round 1 labelled as including
start-up; the page follows a growing ledger without a reload; a ledger that stops verifying turns red."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import urllib.request

import pytest

from flower_chain.ledger.keys import load_public, raw_public
from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread
from tests.support.evaluated_run import EvaluatedRun

pytestmark = pytest.mark.usefixtures("task_identity")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


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
            "--virtual-time-budget=15000",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=180,
    )


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def section(dom: str, ident: str, end: str) -> str:
    part = dom[dom.index(f'id="{ident}"') :]
    return part[: part.index(end)]


def share(img, hex_colour: str, rows: slice, tol=0.08) -> float:
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    sub = img[rows, :, :3]
    return float(
        (
            (abs(sub[..., 0] - rgb[0]) < tol) & (abs(sub[..., 1] - rgb[1]) < tol) & (abs(sub[..., 2] - rgb[2]) < tol)
        ).mean()
    )


@pytest.fixture
def run(tmp_path):
    r = EvaluatedRun(tmp_path / "run")
    for _ in range(3):
        r.round()
    yield r
    r.close()


def view(run, **kw) -> LogView:
    return LogView(run.strategy.ledger, refresh_s=0.0, keys=run.keyring, **kw)


@needs_chromium
def test_status_first_and_the_federated_accuracy_curve_of_a_real_run(run, tmp_path):
    pinned = raw_public(load_public(run.server_pub))
    with ServerThread(build_app(view(run, server_key=pinned, audit=True))) as url:
        dom = chromium(f"{url}/", tmp_path, "--dump-dom").stdout.decode()
        shot = tmp_path / "explorer.png"
        chromium(f"{url}/", tmp_path, "--window-size=1200,1300", f"--screenshot={shot}")
    assert 'data-ready="1"' in dom
    assert (
        dom.index('id="status"')
        < dom.index('id="accuracy-plot"')
        < dom.index('id="rounds"')
        < dom.index('id="clients"')
        < dom.index('id="key-history"')
    )
    assert re.search(r'<div id="status" class="banner verified">VERIFIED</div>', dom)
    assert re.search(r'<div id="audit-status" class="banner audited">AUDITED: 3 of 3 train rounds re-derived', dom)
    assert "the server key is the pinned one" in dom and "no witness cosignatures checked" in dom
    acc = section(dom, "accuracy-plot", "</svg>")
    assert 'data-source="federated"' in acc and 'data-source="centralized"' in acc
    assert "eval_acc — federated (clients, signed)" in acc and "accuracy — centralized (server's claim)" in acc
    assert acc.count("<circle") == 6 and [int(t) for t in re.findall(r'class="xtick"[^>]*>(\d+)<', acc)] == [1, 2, 3]
    assert "eval_loss — federated" in section(dom, "loss-plot", "</svg>")
    for plot in ("train-verdict-plot", "evaluate-verdict-plot"):  # counts and rounds: integer ticks only
        bars = section(dom, plot, "</svg>")
        assert [int(t) for t in re.findall(r'class="ytick"[^>]*>([^<]+)<', bars)] == [0, 1, 2, 3, 4]
        assert [int(t) for t in re.findall(r'class="xtick"[^>]*>([^<]+)<', bars)] == [1, 2, 3]
        assert {v for v in re.findall(r'data-verdict="([^"]+)"', bars)} == {"accepted", "unsigned"}
    rounds = section(dom, "rounds", "</table>")
    assert rounds.count("<tr") == 4 and "(includes start-up)" in rounds and rounds.count("unsigned 1") == 6
    clients = section(dom, "clients", "</table>")
    assert all(f"client-{i}" in clients for i in range(3)) and "unsigned (node 14)" in clients
    assert "(no key)" in clients and "(unsigned)" not in dom
    assert "not reported" not in section(dom, "key-history", "</table>")  # the first key in the list: a client
    assert "−1" not in dom and ">-1<" not in dom

    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert share(img, "#2e7d32", slice(70, 100)) > 0.5, "the green VERIFIED banner is not at the top"
    assert share(img, "#e16f24", slice(420, 720)) > 0.001, "the federated accuracy curve is not visible"


def test_unsigned_history_says_not_reported_and_unpinned_status_is_amber(run):
    with ServerThread(build_app(view(run))) as url:
        st = get_json(f"{url}/api/status")
        hist = get_json(f"{url}/api/keys/node:14")["entries"]
        summary = get_json(f"{url}/api/summary")
    assert st["level"] == "unpinned" and st["headline"] == "VERIFIED (server key not pinned)"
    assert st["audited"] is None and any("not pinned" in t for t in st["not_checked"])
    assert [h["num_examples"] for h in hist if h["kind"] == "evaluate"] == [13, 13, 13]  # it reported them
    assert summary["key_names"]["node:14"] == "unsigned (node 14)"
    assert sorted(c["name"] for c in summary["clients"]) == ["client-0", "client-1", "client-2", "unsigned (node 14)"]
    assert summary["evaluate_reasons"] == {"unsigned": 3} and summary["reasons"] == {"unsigned": 3}


@needs_chromium
def test_the_page_follows_a_growing_ledger_without_a_reload(run, tmp_path):
    app = build_app(view(run))
    summaries = []

    async def growing(scope, receive, send):  # the second look at the summary finds a fourth round appended
        if scope["type"] == "http" and scope["path"] == "/api/summary":
            summaries.append(1)
            if len(summaries) == 2:
                run.round()
        await app(scope, receive, send)

    with ServerThread(growing) as url:
        dom = chromium(f"{url}/", tmp_path, "--dump-dom").stdout.decode()
    assert len(summaries) >= 3, "the page did not poll"
    assert section(dom, "rounds", "</table>").count("<tr") == 5  # header + rounds 1..4, no reload
    assert section(dom, "accuracy-plot", "</svg>").count("<circle") == 8
    assert "following the ledger: 13 blocks" in dom


@needs_chromium
def test_a_ledger_that_stops_verifying_shows_not_verified_with_the_reason(federation_factory, tmp_path):
    fed = federation_factory("sqlite")
    fed.add_round(1, 3)
    pinned = raw_public(fed.server_key)
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0, server_key=pinned))) as url:
        assert get_json(f"{url}/api/status")["level"] == "verified"
        before = fed.writer.head.header.model_after
        forged = dataclasses.replace(fed.update(2, 0, base=before), signature=bytes(64))  # "accepted", not signed
        fed.writer.append(2, [forged], model_before=before, model_after=bytes(32))  # validly server-signed
        st = get_json(f"{url}/api/status")
        dom = chromium(f"{url}/", tmp_path, "--dump-dom").stdout.decode()
    assert st["level"] == "failed" and st["headline"] == "NOT VERIFIED" and "block 2" in st["reason"]
    banner = re.search(r'<div id="status" class="banner (\w+)">([^<]*)</div>', dom)
    assert banner.group(1) == "failed" and banner.group(2).startswith("NOT VERIFIED: ") and "block 2" in banner.group(2)
    assert "banner verified" not in dom
    assert re.search(
        r'<div id="audit-status" class="banner not-audited">NOT AUDITED: not run: the ledger does not '
        r"verify</div>",
        dom,
    )


def test_a_reply_that_reports_no_examples_is_shown_as_not_reported(federation_factory):
    from flower_chain.ledger import UpdateEntry
    from flower_chain.serve.app import explorer_data

    fed = federation_factory("sqlite")
    failed = UpdateEntry(
        kind="train",
        round=1,
        node_id="77",
        key_id="",
        verdict="rejected",
        reason="client-error",
        detail="the node has no key",
        num_examples=-1,
        arrays_digest=b"",
        metrics={},
        statement=b"",
        signature=b"",
    )
    fed.writer.append(1, [failed, fed.update(1, 0)], model_before=bytes(32), model_after=bytes.fromhex("11" * 32))
    data = explorer_data(fed.ledger, fed.ledger.block_count() - 1)
    assert data["keys"]["node:77"][0]["num_examples"] is None
    assert data["key_names"]["node:77"] == "unsigned (node 77)"
    assert data["rounds"][0]["reasons"] == {"client-error": 1}
    spoof = dataclasses.replace(failed, key_id="node:77", node_id="5")  # a hostile key id shaped like a node id
    fed.writer.append(2, [spoof], model_before=bytes.fromhex("11" * 32), model_after=bytes.fromhex("11" * 32))
    data = explorer_data(fed.ledger, fed.ledger.block_count() - 1)
    assert len(data["keys"]["node:77"]) == 1 and data["key_names"]["key:node:77"] == "node:77"


def test_the_status_check_does_not_hold_the_log_while_it_runs(run):
    """A long verify runs on its own ledger handle: tiles and checkpoints are served meanwhile."""
    import threading

    from flower_chain.audit import status as status_module

    started, release = threading.Event(), threading.Event()
    real = status_module.ledger_status

    def slow(ledger, **kw):
        started.set()
        assert release.wait(30)
        return real(ledger, **kw)

    v = view(run)
    status_module.ledger_status = slow
    try:
        with ServerThread(build_app(v)) as url:
            t = threading.Thread(target=lambda: get_json(f"{url}/api/status"))
            t.start()
            assert started.wait(30)
            with urllib.request.urlopen(f"{url}/checkpoint", timeout=5) as r:  # served while the check runs
                assert r.status == 200
            assert get_json(f"{url}/api/rounds")["rounds"]
            release.set()
            t.join(30)
            assert get_json(f"{url}/api/status")["height"] == run.strategy.ledger.head().header.height
    finally:
        status_module.ledger_status = real
        release.set()
