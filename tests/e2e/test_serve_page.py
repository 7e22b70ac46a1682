"""The ledger explorer page: its JSON, proof downloads, and a render in headless Chromium with no other host."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from flower_chain.ledger import EvaluationEntry
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.tlog_proof import InclusionProof
from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture
def site(federation_factory):
    fed = federation_factory("sqlite", n_clients=5)  # one key per reply: a ledger that verifies
    for rnd in range(1, 6):
        fed.add_round(rnd, 4, rejected=rnd % 2)
        fed.add_block(
            rnd,
            [
                EvaluationEntry(
                    round=rnd,
                    source="centralized",
                    num_replies=0,
                    metrics={"accuracy": 0.5 + rnd / 12, "loss": 1 / rnd},
                )
            ],
        )
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0))) as url:
        yield fed, url


def test_explorer_json_matches_the_ledger_and_proofs_download(site):
    fed, url = site
    status, body, _ = get(f"{url}/api/rounds")
    data = json.loads(body)
    assert status == 200 and [r["round"] for r in data["rounds"]] == [1, 2, 3, 4, 5]
    assert [(r["accepted"], r["rejected"]) for r in data["rounds"]] == [(4, 1), (4, 0), (4, 1), (4, 0), (4, 1)]
    assert data["rounds"][0]["reasons"] == {"bad-signature": 1}
    assert [a["accuracy"] for a in data["accuracy"]] == pytest.approx([0.5 + r / 12 for r in range(1, 6)])
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in data["rounds"])
    summary = json.loads(get(f"{url}/api/summary")[1])
    assert summary["reasons"] == {"bad-signature": 3} and summary["checkpoint"] == fed.writer.checkpoint()
    kid = summary["keys"][0]
    hist = json.loads(get(f"{url}/api/keys/{kid}")[1])["entries"]
    assert hist and all(h["index"] < fed.writer.log_size for h in hist)
    status, body, headers = get(f"{url}/api/proof/{hist[0]['index']}")
    assert status == 200 and "attachment" in headers["content-disposition"]
    proof = InclusionProof.from_text(body.decode())
    cp = proof.verify(raw_public(fed.server_key))
    assert proof.index == hist[0]["index"] and cp.size == fed.writer.log_size
    for bad, want in (
        ("api/proof/99999", 404),
        ("api/proof/abc", 400),
        ("api/proof/-1", 400),
        ("api/keys/nobody", 404),
        ("api/nothing", 404),
    ):
        assert get(f"{url}/{bad}")[0] == want, bad
    status = json.loads(get(f"{url}/api/status")[1])  # verified, but under no pinned key: not green
    assert status["verified"] and status["level"] == "unpinned" and status["audited"] is None
    fed.add_round(6, 2)  # the explorer follows the growing ledger
    assert [r["round"] for r in json.loads(get(f"{url}/api/rounds")[1])["rounds"]][-1] == 6


def test_page_has_no_reference_to_another_host(site):
    _, url = site
    html = get(f"{url}/")[1].decode()
    hosts = set(re.findall(r"(?:https?:)?//([A-Za-z0-9.-]+\.[A-Za-z]{2,})", html))
    assert hosts == {"www.w3.org"}, hosts  # only the SVG namespace name, which is never fetched
    assert "<script src" not in html and "<link" not in html and "@import" not in html


def _chromium(url: str, tmp_path, *extra: str) -> subprocess.CompletedProcess:
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
            "--virtual-time-budget=10000",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=120,
    )


def test_explorer_renders_in_headless_chromium_without_other_hosts(site, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page cannot be rendered")
    fed, url = site
    netlog = tmp_path / "net.json"
    res = _chromium(f"{url}/", tmp_path, "--dump-dom", f"--log-net-log={netlog}")
    dom = res.stdout.decode()
    assert res.returncode == 0 and 'data-ready="1"' in dom, res.stderr.decode()[-2000:]
    rounds = dom[dom.index('id="rounds"') :]
    rounds = rounds[: rounds.index("</table>")]
    assert rounds.count("<tr") == 6  # the header and rounds 1..5
    plot = dom[dom.index('id="accuracy-plot"') :]
    plot = plot[: plot.index("</svg>")]
    assert 'class="series"' in plot and plot.count("<circle") == 5
    timing = dom[dom.index('id="timing-plot"') :]
    assert timing[: timing.index("</svg>")].count("<circle") == 5
    assert "bad-signature" in dom and "tlog-proof" in dom
    # every request the page made went to the server it came from (Chromium's own update and
    # account checks carry no page initiator and are blocked by the resolver rule above)
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job and e.get("params", {}).get("initiator", "not an origin") != "not an origin"
    ]
    assert len(page) >= 3 and all(u.startswith(url + "/") for u in page), page
    assert {u[len(url) :] for u in page} >= {"/api/summary", "/api/rounds"}

    shot = tmp_path / "shot.png"
    _chromium(f"{url}/", tmp_path, "--window-size=1200,1400", f"--screenshot={shot}")
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and img.std() > 0.05, "the screenshot is blank"
    blue = (
        (abs(img[..., 0] - 0x09 / 255) < 0.1)
        & (abs(img[..., 1] - 0x69 / 255) < 0.1)
        & (abs(img[..., 2] - 0xDA / 255) < 0.1)
    ).mean()
    assert blue > 0.0003, "the accuracy line is not visible"


def test_an_undecodable_new_block_is_503_for_the_explorer_not_500(site):
    fed, url = site
    fed.writer.append(7, [b"\xff not a CE1 entry"])  # validly signed, but its entry does not decode
    for path in ("api/rounds", "api/summary", "api/keys/x"):
        status, body, _ = get(f"{url}/{path}")
        assert status == 503 and b"cannot be read" in body, path
    status, body, _ = get(f"{url}/checkpoint")
    assert status == 200 and body.decode() == fed.writer.checkpoint()  # the log itself is still served
