"""A ledger rewritten under a running ``flower-chain serve``: the server stops (503 naming both checkpoints)
instead of serving tiles of another history under the promise that full tiles are immutable."""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request

import pytest

from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread
from tests.support import dishonest


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def served(federation_factory):
    fed = federation_factory("sqlite")
    fed.add_round(1, 260)  # one full level-0 tile
    fed.add_round(2, 5)
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0))) as url:
        assert get(url + "/checkpoint")[0] == 200 and get(url + "/tile/0/000")[0] == 200
        yield fed, url


def _served_everything_stops(url: str, old_checkpoint: bytes) -> None:
    for path in ("/checkpoint", "/tile/0/000", "/tile/entries/000", "/api/summary", "/api/rounds", "/api/proof/3"):
        code, body = get(url + path)
        assert code == 503, (path, code, body[:200])
        assert b"rewritten under this server" in body and old_checkpoint in body, body[:400]
    assert get(url + "/")[0] == 200  # the page still loads and shows the APIs' errors


def test_same_size_other_history_stops_the_server(served):
    fed, url = served
    old = get(url + "/checkpoint")[1]

    def edit(blocks):  # another reply in round 1, same number of entries: same size, another root
        fields, entries = blocks[1]
        entries[3] = dataclasses.replace(entries[3], metrics={"train_loss": 9.0})

    dishonest.rewrite(fed.uri, fed.server_key, edit)
    code, body = get(url + "/checkpoint")
    assert code == 503 and b"another history at the same height" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_a_longer_rewritten_log_stops_the_server(served):
    fed, url = served
    old = get(url + "/checkpoint")[1]

    def edit(blocks):  # round 1 changed, and a block more
        blocks[1][1][0] = dataclasses.replace(blocks[1][1][0], metrics={"train_loss": 1.5})
        blocks.append([dict(blocks[2][0], round=3), [dataclasses.replace(e, round=3) for e in blocks[2][1]]])

    dishonest.rewrite(fed.uri, fed.server_key, edit)
    fed.ledger.reload()
    code, body = get(url + "/tile/0/001.p/10")  # beyond the served head: the server looks and finds the rewrite
    assert code == 503 and b"does not extend the served one" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_a_shorter_log_stops_the_server(served):
    fed, url = served
    old = get(url + "/checkpoint")[1]
    dishonest.rewrite(fed.uri, fed.server_key, lambda blocks: blocks[:-1])
    code, body = get(url + "/api/summary")
    assert code == 503 and b"the log went back from 266 entries (block 2)" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_honest_growth_is_still_followed(served):
    fed, url = served
    before = get(url + "/checkpoint")[1]
    fed.add_round(3, 4)
    code, after = get(url + "/checkpoint")
    assert code == 200 and after != before and get(url + "/tile/entries/001.p/13")[0] == 200
