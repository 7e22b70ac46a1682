"""A ledger rewritten under a running ``flower-chain serve``: the server stops (503 naming both checkpoints)
instead of serving tiles of another history under the promise that full tiles are immutable."""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    assert code == 503 and b"the stored tree of the served 266 entries has another root" in body, body[:300]
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
    assert code == 503 and b"has another root" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_a_shorter_log_stops_the_server(served):
    fed, url = served
    old = get(url + "/checkpoint")[1]
    dishonest.rewrite(fed.uri, fed.server_key, lambda blocks: blocks[:-1])
    code, body = get(url + "/api/summary")
    assert code == 503 and b"the served log of 266 entries (block 2) is no longer stored" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_honest_growth_is_still_followed(served):
    fed, url = served
    before = get(url + "/checkpoint")[1]
    fed.add_round(3, 4)
    code, after = get(url + "/checkpoint")
    assert code == 200 and after != before and get(url + "/tile/entries/001.p/13")[0] == 200


def test_a_rewrite_signed_with_another_key_stops_the_server(served):
    """Whoever can write the storage but holds no server key: the head checkpoint no longer verifies."""
    fed, url = served
    old = get(url + "/checkpoint")[1]

    def edit(blocks):
        blocks[1][1][3] = dataclasses.replace(blocks[1][1][3], metrics={"train_loss": 2.0})

    dishonest.rewrite(fed.uri, Ed25519PrivateKey.generate(), edit)
    code, body = get(url + "/tile/entries/001.p/10")
    assert code == 503 and b"rewritten under this server" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_an_edited_entry_of_a_jsonl_ledger_stops_the_server(federation_factory):
    """No key, no checkpoint touched: one entry of an old block line edited; the head is byte-identical."""
    fed = federation_factory("jsonl")
    fed.add_round(1, 260)
    fed.add_round(2, 5)
    path = Path(fed.uri[len("jsonl://") :])
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0))) as url:
        old = get(url + "/checkpoint")[1]
        lines = path.read_bytes().split(b"\n")
        rec = json.loads(lines[2])  # block 1 (line 0 the magic, line 1 the genesis)
        rec["entries"][-1] = base64.b64encode(base64.b64decode(rec["entries"][-1]) + b"\x00").decode()
        lines[2] = json.dumps(rec).encode()
        path.write_bytes(b"\n".join(lines))
        code, body = get(url + "/tile/entries/001.p/10")
        assert code == 503 and b"another root" in body, body[:300]
        _served_everything_stops(url, old.split(b"\n\n")[0])


def test_edited_entries_beside_an_intact_stored_tree_stop_the_server(served):
    """SQLite keeps the tree's nodes apart from the entries: an entry edited alone is caught when served."""
    fed, url = served
    old = get(url + "/checkpoint")[1]
    db = sqlite3.connect(fed.uri[len("sqlite:///") :])
    db.execute("UPDATE entries SET data = data || x'00' WHERE idx = 3")
    db.commit()
    db.close()
    code, body = get(url + "/tile/entries/000")
    assert code == 503 and b"tile/entries/000 " in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_a_rewritten_header_chain_plus_one_block_stops_the_server(served):
    """Same entries, same tree: only round 1's model_after re-signed, and a block appended. The tree extends
    the served one; the served head block does not survive."""
    fed, url = served
    old = get(url + "/checkpoint")[1]

    def edit(blocks):
        blocks[1][0]["model_after"] = b"\x07" * 32
        blocks[2][0]["model_before"] = b"\x07" * 32
        blocks.append([dict(blocks[2][0], round=3), [dataclasses.replace(e, round=3) for e in blocks[2][1]]])

    dishonest.rewrite(fed.uri, fed.server_key, edit)
    code, body = get(url + "/checkpoint")
    assert code == 503 and b"block 2 (the served head) was rewritten" in body, body[:300]
    _served_everything_stops(url, old.split(b"\n\n")[0])


def test_a_new_head_whose_checkpoint_drops_the_head_line_stops_the_server(served):
    """The served checkpoints name their head block; an appended block whose checkpoint does not is refused."""
    fed, url = served
    assert b"flower-chain/head 2 " in get(url + "/checkpoint")[1]

    def edit(blocks):  # history kept as it is (the writer's headers), one block appended, no head lines
        blocks.append([dict(blocks[2][0], round=3), [dataclasses.replace(e, round=3) for e in blocks[2][1]]])

    dishonest.rewrite(fed.uri, fed.server_key, edit)
    code, body = get(url + "/checkpoint")
    assert code == 503, body[:300]


def _recompute_nodes(db: sqlite3.Connection, upto_level: int) -> None:
    """Storage rewritten consistently below ``upto_level``: every stored node recomputed from the entries."""
    from flower_chain.ledger import merkle

    entries = [bytes(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]
    level = merkle.leaf_hashes(entries)
    for lv in range(upto_level + 1):
        for i, h in enumerate(level):
            db.execute("UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?", (h, lv, i))
        level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]


@pytest.mark.parametrize("upto", [8, 30])
def test_entries_and_their_subtree_rewritten_consistently_stop_the_server(federation_factory, upto):
    """Review 2 (R2-3, R2-8): entries edited and the stored nodes recomputed from them (up to the tile's
    subtree, or all of them): a full tile is proved against the served root before it is cached as
    immutable, so the very first request after the rewrite is a 503, not a year-long cached 200."""
    fed = federation_factory("sqlite")
    fed.add_round(1, 300)
    fed.add_round(2, 300)  # 601 entries: [0, 256) lies inside the stored subtree [0, 512)
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=3600.0))) as url:  # no re-check in between
        old = get(url + "/checkpoint")[1]
        db = sqlite3.connect(fed.uri[len("sqlite:///") :])
        row = db.execute("SELECT data FROM entries WHERE idx = 5").fetchone()[0]
        db.execute("UPDATE entries SET data = ? WHERE idx = 5", (bytes(row).replace(b"accepted", b"rejected"),))
        _recompute_nodes(db, upto)
        db.commit()
        db.close()
        code, body = get(url + "/tile/entries/000")
        assert code == 503 and b"is not in the served tree" in body, body[:300]
        assert get(url + "/tile/0/000")[0] == 503
        assert old.split(b"\n\n")[0] in body
