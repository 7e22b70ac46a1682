"""Client receipts and fork detection: an honest run where every receipt verifies; a server that drops
an accepted update; a server that rewrites an earlier block; a server that swaps its key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, RecordDict

from flower_chain.clients.receipts import METRIC_ERRORS, METRIC_RECEIPTS, origin_dir_name, origin_for, read_counts
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.tlog_proof import InclusionProof
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import CTX_RECEIPT
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, fedavg, train_reply, with_content

NODES = [101, 102, 103]


pytestmark = pytest.mark.usefixtures("task_identity")


class World:
    """A LedgerStrategy server and three clients whose mods keep receipts in tmp dirs."""

    def __init__(self, tmp_path, server_key=None, clients=None, federation="fed-r", ledger="memory:"):
        self.tmp = tmp_path
        self.federation = federation
        self.clients = clients or Clients(len(NODES))
        self.server_key = server_key or Ed25519PrivateKey.generate()
        self.strategy = LedgerStrategy(
            fedavg(), ledger=ledger, keyring=self.clients.keyring, server_key=self.server_key, federation_id=federation
        )
        self.mods = [make_signing_mod(k, receipts_dir=tmp_path / "receipts") for k in self.clients.keys]
        self.global_arrays = arrays(0)
        self.replies = {}

    def key_dir(self, i):
        return self.tmp / "receipts" / key_id(self.clients.keys[i])

    def dir(self, i):
        """The client's directory of this federation's receipts and errors.log."""
        return self.key_dir(i) / origin_dir_name(origin_for(self.federation))

    def counts(self, i):
        return read_counts(self.key_dir(i), self.federation)

    def round(self, rnd, *, aggregate=True, tamper=None):
        """One train round; ``tamper`` maps a client index to a function that rewrites the config dict
        (and may return ``(config, arrays)``) of that client's instruction: a dishonest server."""
        msgs = sorted(
            self.strategy.configure_train(rnd, self.global_arrays, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        msgs = [_tampered(m, (tamper or {}).get(i)) for i, m in enumerate(msgs)]
        replies = [
            mod(m, context(), lambda msg, c, i=i: train_reply(msg, arrays(100 * rnd + i), 10))
            for i, (m, mod) in enumerate(zip(msgs, self.mods))
        ]
        self.replies[rnd] = replies
        if aggregate:
            agg, _ = self.strategy.aggregate_train(rnd, replies)
            self.global_arrays = agg
        return replies


def _tampered(msg, fn):
    if fn is None:
        return msg
    out = fn(dict(msg.content["config"].items()))
    config, arrays_ = out if isinstance(out, tuple) else (out, msg.content["arrays"])
    return with_content(msg, RecordDict({"arrays": arrays_, "config": ConfigRecord(config)}))


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_honest_run_every_receipt_verifies(tmp_path, backend):
    w = World(tmp_path, ledger="memory:" if backend == "memory" else f"sqlite:///{tmp_path}/l.db")
    for rnd in (1, 2, 3, 4):
        w.round(rnd)
    for i in range(len(NODES)):
        assert w.counts(i) == {"receipts": 3, "errors": 0}
        assert not (w.dir(i) / "errors.log").exists()
        for rnd in (1, 2, 3):
            proof = InclusionProof.from_text((w.dir(i) / f"round-{rnd}.proof").read_text())
            cp = proof.verify(raw_public(w.server_key))
            assert cp.origin == "flower-chain/fed-r"
    # the counts travel, signed, in the client's metrics
    last = w.replies[4][0].content["metrics"]
    assert last[METRIC_RECEIPTS] == 3 and last[METRIC_ERRORS] == 0


def test_server_that_drops_an_accepted_update_is_caught(tmp_path):
    w = World(tmp_path)
    w.round(1)
    w.round(2)

    def drop_receipts(config):  # a dishonest server: the victim's update of round 2 has no place in its log
        return {**config, CTX_RECEIPT: ""}

    w.round(3, tamper={0: drop_receipts})
    assert w.counts(0)["errors"] == 1 and w.counts(0)["receipts"] == 1
    assert "missing from the ledger" in (w.dir(0) / "errors.log").read_text()
    assert w.counts(1) == {"receipts": 2, "errors": 0}
    w.round(4)
    # the error count is in the client's next signed metrics
    assert w.replies[4][0].content["metrics"][METRIC_ERRORS] == 1


def test_server_that_rewrites_an_earlier_block_is_caught(tmp_path):
    w = World(tmp_path)
    w.round(1)
    w.round(2)
    seen = dict(w.strategy.core.node_seen)
    # the server rebuilds its ledger from scratch with a different round 1 (same key, same federation)
    forked = World(tmp_path, server_key=w.server_key, clients=w.clients)
    forked.mods = w.mods  # the same clients, with their receipts directories
    forked.strategy.core.node_seen.update(seen)
    msgs = []
    forked.strategy.min_accepted = 0  # the forger records empty rounds
    for rnd in (1, 2):  # rewritten history: rounds 1 and 2 with nobody in them
        msgs += forked.strategy.configure_train(rnd, arrays(5), ConfigRecord({}), FakeGrid(NODES))
        forked.strategy.aggregate_train(rnd, [])
    forked.global_arrays = arrays(5)
    forked.round(3)  # a server that cannot prove consistency may claim once not to know the node...
    forked.round(4)  # ...but not twice: the clients flag the fork
    for i in range(len(NODES)):
        log = (w.dir(i) / "errors.log").read_text()
        assert "FORK" in log, log
    assert msgs  # the fork really served instructions


def test_server_that_swaps_its_key_is_caught(tmp_path):
    w = World(tmp_path)
    w.round(1)
    impostor = World(tmp_path, clients=w.clients)  # another server key, same clients
    impostor.mods = w.mods
    impostor.round(1)
    assert all(w.counts(i)["errors"] >= 1 for i in range(len(NODES)))
    assert "another server key" in (w.dir(0) / "errors.log").read_text()


def test_server_restart_defers_once_then_delivers_every_receipt(tmp_path):
    uri = f"sqlite:///{tmp_path}/l.db"
    w = World(tmp_path, ledger=uri)
    w.round(1)
    w.round(2)
    w.strategy.close()
    # the server process restarts: it no longer knows which node holds which key, nor what they saw
    again = World(tmp_path, server_key=w.server_key, clients=w.clients, ledger=uri)
    again.mods, again.global_arrays = w.mods, w.global_arrays
    again.round(3)
    again.round(4)
    again.round(5)
    for i in range(len(NODES)):
        assert w.counts(i) == {"receipts": 4, "errors": 0}, (
            (w.dir(i) / "errors.log").read_text() if (w.dir(i) / "errors.log").exists() else w.counts(i)
        )
        assert sorted(p.name for p in w.dir(i).glob("round-*.proof")) == [f"round-{r}.proof" for r in (1, 2, 3, 4)]


def test_receipts_read_through_the_node_cache_equal_proofs_from_storage(tmp_path):
    """The server reads each stored subtree hash once for all nodes' receipts: the proofs it sends are the
    very proofs built from storage, round after round (the cache never serves a proof to an older head)."""
    from flower_chain.ledger import proofs
    from flower_chain.ledger.tlog_proof import prove_inclusion

    w = World(tmp_path, ledger=f"sqlite:///{tmp_path}/l.db")
    receipts, ledger = w.strategy.core.receipts, w.strategy.core.ledger
    for rnd in range(1, 7):
        w.round(rnd)
        head = ledger.head()
        for seen in {b.header.log_size for b in ledger.blocks()}:
            assert receipts._consistency_from(seen, head.header.log_size) == b"".join(
                proofs.consistency_proof(ledger, seen)
            ), (rnd, seen)
        for index in range(head.header.log_size):
            cached = prove_inclusion(
                ledger, index, head=head, node=receipts._node, entry=receipts._entry(index, head.header.log_size)
            )
            assert cached == prove_inclusion(ledger, index), (rnd, index)
    sizes = {b.header.log_size for b in ledger.blocks()}
    unsigned = next(n for n in range(1, head.header.log_size) if n not in sizes)
    assert receipts._consistency_from(unsigned, head.header.log_size) is None  # no checkpoint of that size
    assert receipts._node.cache_info().hits > receipts._node.cache_info().misses


def test_a_storage_error_is_not_remembered_as_a_missing_checkpoint(tmp_path):
    """One failed read while building receipts costs that one node its consistency proof, not every node."""
    from flower_chain.ledger.errors import LedgerError

    w = World(tmp_path, ledger=f"sqlite:///{tmp_path}/l.db")
    w.round(1)
    w.round(2)
    receipts, ledger = w.strategy.core.receipts, w.strategy.core.ledger
    head = ledger.head()
    seen = next(b.header.log_size for b in ledger.blocks() if b.header.height == 1)
    real, calls = ledger.block, []

    def flaky(height):
        calls.append(height)
        if len(calls) == 1:
            raise LedgerError("database is locked")
        return real(height)

    ledger.block = flaky
    try:
        assert receipts._consistency_from(seen, head.header.log_size) is None
        assert receipts._consistency_from(seen, head.header.log_size)  # read again, and now remembered
    finally:
        del ledger.block
