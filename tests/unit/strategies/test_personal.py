"""Per-node instruction contents (flower_chain.strategies.personal) are what a record built value by value gives."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flower_chain.strategies.personal import PersonalCache
from flower_chain.wire import CTX_FEDERATION


def test_each_node_gets_the_round_record_plus_its_own_receipt_only():
    shared = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({CTX_FEDERATION: "f", "lr": 0.1, "r": b"x"})})
    proof = b"p" * 64
    receipts = [
        {"cp": "head", "from": 5, "proof": proof, "receipt": "a"},  # the first fixes the round's base
        {"cp": "head", "from": int("5"), "proof": bytes(proof)},  # no receipt: the first node's must not leak
        {"cp": "head", "from": 7, "proof": b"", "receipt": "c", "r": b"y"},  # overrides a round value
        {"cp": "head", "from": 5.0, "proof": proof},  # equal but another type: set as given
    ]
    cache = PersonalCache()
    for receipt in receipts:
        got = cache.content(shared, receipt)
        want = ConfigRecord({**dict(shared["config"].items()), **receipt})
        assert got is not None and got["arrays"] is shared["arrays"]
        assert list(got["config"].items()) == list(want.items())
        assert [type(v) for v in got["config"].values()] == [type(v) for v in want.values()]
    assert list(shared["config"].keys()) == [CTX_FEDERATION, "lr", "r"]  # the strategy's record is untouched


def test_content_without_the_ledger_record_is_left_alone():
    assert PersonalCache().content(RecordDict({"config": ConfigRecord({"lr": 0.1})}), {"cp": "x"}) is None
