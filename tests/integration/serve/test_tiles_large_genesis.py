"""A 10,000-client federation served as tlog-tiles (issue 19 item 13): its genesis keyring, continued in
``keys`` entries, fits the entry bundles; the first bundle is served and a tiles client reads the whole
keyring from it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from flower_chain.cli.receipts import log_entries
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.genesis import MAX_ENTRY_BYTES, leading_genesis
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.tiles import TilesClient, decode_bundle
from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_first_entry_bundle_of_a_10000_key_federation_is_served_and_read(federation_factory):
    fed = federation_factory("sqlite", n_clients=10_000)
    fed.add_round(1, 300)  # past one full tile of entries: tile/entries/000 is the full bundle
    keyring = {key_id(k): raw_public(k) for k in fed.client_keys}
    spans = fed.ledger.block(0).header.entry_count
    assert spans > 1
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0))) as url:
        status, body = get(f"{url}/tile/entries/000")
        assert status == 200, body[:200]
        bundle = decode_bundle(body)
        assert bundle == list(fed.ledger.entries(0, 256))
        assert max(len(e) for e in bundle[:spans]) <= MAX_ENTRY_BYTES
        client = TilesClient(url, raw_public(fed.server_key), origin="flower-chain/fed-test")
        cp, _ = client.checkpoint()
        client.verify_tree(cp)
        decoded = [decode_entry(d) for d in client.entries(0, cp.size, cp.size)]
        genesis, n = leading_genesis(decoded)
        assert n == spans and genesis.client_keys == keyring
        client.verify_inclusion(bundle[spans - 1], spans - 1, cp)  # the last keys entry, proved from tiles
        assert json.loads(get(f"{url}/api/summary")[1])["allowed_keys"] == 10_000
        # `flower-chain receipts check --log URL` reads the log this way: the keyring, then the updates
        entries, genesis = log_entries(url, raw_public(fed.server_key))
        rest = list(entries)
        assert genesis.client_keys == keyring and len(rest) == 300 and all(isinstance(e, UpdateEntry) for e in rest)
