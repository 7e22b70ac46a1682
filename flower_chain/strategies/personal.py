"""Each node's instruction content: the round's content with the node's receipt in its ledger ConfigRecord.

A strategy like FedAvg sends every node the same RecordDict; the ledger adds a per-node receipt
(:meth:`flower_chain.strategies.receipts.ReceiptServer.config`) to the record that carries the ledger
context. Most of a receipt is the same for every node (the checkpoint, the server key, the head
header and its signature; the consistency proof of nodes that saw the same checkpoint): Flower checks
every value put in a ConfigRecord, so building 10,000 records value by value costs more than the
receipts. :class:`PersonalCache` builds the round's record once with the first node's receipt, and
for each node copies it (``ConfigRecord.copy``, no check: the values were checked) and sets only the
values that differ from those already in it (in value or type). The result is the record
``ConfigRecord({**round_record, **receipt})`` would give, key for key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from flwr.app import ConfigRecord, RecordDict

from flower_chain.wire import CTX_FEDERATION

_MISSING = object()


class PersonalCache:
    """Per-node contents for one round's instructions (see the module docstring)."""

    def __init__(self) -> None:
        self._src: RecordDict | None = None
        self._names: list[str] = []  # the source's ledger ConfigRecords (the ones holding the ledger context)
        self._base: dict[str, ConfigRecord] = {}  # name -> the record with the first receipt in it
        self._first: dict[str, Any] = {}  # the receipt in the bases

    def content(self, src: RecordDict, receipt: Mapping[str, Any]) -> RecordDict | None:
        """``src`` with ``receipt`` added to its ledger ConfigRecord(s), or ``None``: ``src`` holds none."""
        if src is not self._src:  # another strategy's content (or the first): its records and bases anew
            self._src, self._first = src, dict(receipt)
            self._names = [n for n, r in src.items() if isinstance(r, ConfigRecord) and CTX_FEDERATION in r]
            self._base = {}
            for name in self._names:
                base = cast(ConfigRecord, src[name]).copy()
                for k, v in self._first.items():
                    base[k] = v
                self._base[name] = base
        if not self._names:
            return None
        out, first = src.copy(), self._first
        for name in self._names:
            record = self._base[name].copy()
            for k, v in receipt.items():
                was = first.get(k, _MISSING)
                if was is not v and (type(was) is not type(v) or was != v):  # equal and of one type: checked already
                    record[k] = v
            for k in first:
                if k not in receipt:  # a receipt field this node does not get: the round's own value, or none
                    original: Any = cast(ConfigRecord, src[name]).get(k, _MISSING)
                    if original is _MISSING:
                        del record[k]
                    else:
                        record[k] = original
            out[name] = record
        return out
