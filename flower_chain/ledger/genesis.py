"""The genesis keyring across block 0: the one place that splits it into entries and joins it back.

A genesis whose entry would exceed 65,535 bytes (about 1,150 client keys) cannot travel in a C2SP
tlog-tiles entry bundle, which prefixes each entry with a ``uint16`` length. The writer then keeps in the
genesis entry as many keys as fit (in CE1 key order) and continues the keyring in ``keys`` entries
(:class:`~flower_chain.ledger.entries.KeysEntry`) right after it, in block 0, each as full as the limit
allows (docs/ledger-format.md §3.1a). A genesis that fits stays one entry, byte for byte as before.

Every reader of the genesis goes through :func:`join_genesis` (directly, or through :func:`read_genesis`,
:func:`leading_genesis` and :func:`keyring_from_proof`), which returns one :class:`GenesisEntry` holding the
whole keyring and refuses, naming the entry: a block 0 that does not start with the genesis, any other entry
than ``keys`` entries after it, an empty ``keys`` entry, a key id found twice, a key that does not match its
key id. ``verify`` adds the rule that no ``keys`` entry stands outside block 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.entries import MAX_BLOCK0_ENTRIES, Entry, GenesisEntry, KeysEntry, decode_entry
from flower_chain.ledger.errors import AppendError, LedgerError
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.text import safe_text

__all__ = [
    "MAX_BLOCK0_ENTRIES",
    "MAX_ENTRY_BYTES",
    "GenesisError",
    "join_genesis",
    "keyring_from_proof",
    "keyring_proof",
    "leading_genesis",
    "read_genesis",
    "split_genesis",
]

#: The largest entry a tlog-tiles entry bundle can hold (its ``uint16`` length prefix).
MAX_ENTRY_BYTES = 0xFFFF


class GenesisError(LedgerError):
    """Block 0 does not hold a well-formed genesis keyring; ``entry`` is the index of the entry at fault."""

    def __init__(self, message: str, entry: int) -> None:
        super().__init__(message)
        self.entry = entry


def split_genesis(genesis: GenesisEntry, limit: int = MAX_ENTRY_BYTES) -> list[GenesisEntry | KeysEntry]:
    """Block 0's entries for ``genesis`` (which holds the whole keyring): ``[genesis]`` when it fits ``limit``
    bytes, else the genesis with as many keys as fit, then ``keys`` entries each holding as many as fit.

    Raises :class:`AppendError` when an entry cannot fit however the keys are split (fields of the genesis
    other than its keys alone over the limit).
    """
    genesis = replace(genesis, keys_entries=0)
    if len(genesis.to_bytes()) <= limit:
        return [genesis]
    keys = sorted(genesis.client_keys.items(), key=lambda kv: kv[0].encode("utf-8"))  # CE1 map order
    out: list[GenesisEntry | KeysEntry] = []
    chunk: dict[str, bytes] = {}
    size = len(replace(genesis, client_keys={}, keys_entries=MAX_BLOCK0_ENTRIES - 1).to_bytes())  # counts itself
    for kid, raw in keys:
        cost = 4 + len(kid.encode("utf-8")) + len(encode(raw))  # one CE1 map pair: u32 key length, key, value
        if size + cost > limit and (chunk or out):
            out.append(replace(genesis, client_keys=chunk) if not out else KeysEntry(client_keys=chunk))
            chunk, size = {}, len(KeysEntry(client_keys={}).to_bytes())
        chunk[kid], size = raw, size + cost
    out.append(replace(genesis, client_keys=chunk) if not out else KeysEntry(client_keys=chunk))
    first = out[0]
    assert isinstance(first, GenesisEntry)
    out[0] = replace(first, keys_entries=len(out) - 1)
    too_big = next((i for i, e in enumerate(out) if len(e.to_bytes()) > limit), None)
    if too_big is not None:
        raise AppendError(
            f"entry {too_big} of the genesis block would exceed {limit} bytes, the most a tlog-tiles "
            "entry bundle holds: shorten the federation id or the strategy name"
        )
    return out


def join_genesis(entries: Sequence[Entry]) -> GenesisEntry:
    """The genesis of block 0's decoded ``entries`` (all of them, in order) with the whole keyring.

    Raises :class:`GenesisError` naming the entry when block 0 is not a genesis entry followed only by
    non-empty ``keys`` entries, a key id appears twice, or a key does not match its key id.
    """
    if not entries or not isinstance(entries[0], GenesisEntry):
        what = "no entry" if not entries else f"a {safe_text(entries[0].TYPE, 40)} entry"
        if entries and isinstance(entries[0], KeysEntry):
            what = "a keys entry before the genesis entry"
        raise GenesisError(f"block 0 must start with a genesis entry, it starts with {what}", 0)
    genesis = entries[0]
    if len(entries) - 1 != genesis.keys_entries:
        raise GenesisError(
            f"the genesis counts {genesis.keys_entries} keys entries after it, block 0 holds {len(entries) - 1}",
            min(len(entries) - 1, genesis.keys_entries + 1),
        )
    parts = [genesis.client_keys]
    for i, entry in enumerate(entries[1:], start=1):
        if not isinstance(entry, KeysEntry):
            what = "a second genesis" if isinstance(entry, GenesisEntry) else f"a {safe_text(entry.TYPE, 40)}"
            raise GenesisError(f"block 0 holds {what} entry: only keys entries follow the genesis", i)
        if not entry.client_keys:
            raise GenesisError("a keys entry with no keys", i)
        parts.append(entry.client_keys)
    keyring: dict[str, bytes] = {}
    where: dict[str, int] = {}
    for i, part in enumerate(parts):
        for kid, raw in part.items():
            if kid in where:
                raise GenesisError(
                    f"key id {safe_text(kid, 40)} appears twice in the genesis keyring (entries {where[kid]} and {i})",
                    i,
                )
            if not isinstance(raw, bytes) or key_id(raw) != kid:
                raise GenesisError(f"client key {safe_text(kid, 40)} does not match its key id", i)
            keyring[kid], where[kid] = raw, i
    return genesis if len(entries) == 1 else replace(genesis, client_keys=keyring, keys_entries=0)  # all in one


def _decode_all(datas: Iterable[bytes]) -> list[Entry]:
    out = []
    for i, data in enumerate(datas):
        try:
            out.append(decode_entry(data))
        except LedgerError as e:
            raise GenesisError(f"entry {i} of block 0 does not decode: {e}", i) from e
    return out


def read_genesis(ledger: Ledger) -> GenesisEntry:
    """The genesis of a ledger with its whole keyring (the genesis entry and the ``keys`` entries of block 0).

    Raises :class:`LedgerError` for an empty ledger, a block 0 that does not hold a well-formed genesis
    keyring (:class:`GenesisError`), or one whose header counts more entries than it holds.
    """
    if ledger.block_count() == 0:
        raise LedgerError(f"{ledger.uri}: the ledger is empty (no genesis block)")
    count = ledger.block(0).header.log_size
    if not 1 <= count <= MAX_BLOCK0_ENTRIES:
        raise LedgerError(
            f"{ledger.uri}: block 0 counts {count} entries (a genesis and at most "
            f"{MAX_BLOCK0_ENTRIES - 1} keys entries)"
        )
    datas = list(ledger.entries(0, count))
    if len(datas) != count:
        raise LedgerError(f"{ledger.uri}: block 0 counts {count} entries, the ledger holds {len(datas)}")
    try:
        return join_genesis(_decode_all(datas))
    except GenesisError as e:
        raise GenesisError(f"{ledger.uri}: {e}", e.entry) from e


def leading_genesis(entries: Sequence[Entry]) -> tuple[GenesisEntry, int]:
    """The genesis and how many entries it spans, from a log's entries (tiles, proofs: block boundaries
    unknown): entry 0 and the number of ``keys`` entries it counts (``keys_entries``), never a ``keys`` entry the
    genesis does not count (one at the start of block 1 would otherwise pass for part of the keyring)."""
    first = entries[0] if entries else None
    n = 1 + (first.keys_entries if isinstance(first, GenesisEntry) else 0)
    if n > len(entries):
        raise GenesisError(f"the genesis counts {n - 1} keys entries after it, the log holds {len(entries) - 1}", 0)
    return join_genesis(entries[:n]), n


def keyring_proof(ledger: Ledger, size: int) -> dict[str, Any]:
    """What a SecAgg+ request carries for a node to read the genesis keyring from the signed log of ``size``
    entries: ``genesis`` (entry 0) with ``genesis_inclusion``, and, for a keyring continued in ``keys``
    entries, ``genesis_keys`` (entries 1..k of block 0) with ``genesis_keys_inclusion`` (one proof each)."""
    from flower_chain.ledger.proofs import inclusion_proof

    count = ledger.block(0).header.log_size
    out: dict[str, Any] = {
        "genesis": next(iter(ledger.entries(0, 1))),
        "genesis_inclusion": b"".join(inclusion_proof(ledger, 0, size)),
    }
    if count > 1:
        out["genesis_keys"] = list(ledger.entries(1, count))
        out["genesis_keys_inclusion"] = [b"".join(inclusion_proof(ledger, i, size)) for i in range(1, count)]
    return out


def _hashes(raw: object) -> list[bytes] | None:
    if not isinstance(raw, bytes) or len(raw) % merkle.HASH_SIZE:
        return None
    return [raw[i : i + merkle.HASH_SIZE] for i in range(0, len(raw), merkle.HASH_SIZE)]


def keyring_from_proof(proof: dict[str, Any], size: int, root: bytes) -> GenesisEntry:
    """The genesis with its whole keyring from a :func:`keyring_proof` map, each entry proved to stand at its
    index (0, then 1..k) in the log of ``size`` entries and ``root`` (a checkpoint the caller verified).

    Raises :class:`LedgerError` naming what is missing, malformed or not proved.
    """
    more = proof.get("genesis_keys", [])
    paths = proof.get("genesis_keys_inclusion", [])
    if not isinstance(more, list) or not isinstance(paths, list) or len(more) != len(paths):
        raise LedgerError("the genesis keys entries do not come as two lists of equal length (entries, proofs)")
    if len(more) >= MAX_BLOCK0_ENTRIES:
        raise LedgerError(f"{len(more)} genesis keys entries: at most {MAX_BLOCK0_ENTRIES - 1}")
    datas = [proof.get("genesis"), *more]
    for index, (data, path) in enumerate(zip(datas, [proof.get("genesis_inclusion"), *paths], strict=True)):
        hashes = _hashes(path)
        if not isinstance(data, bytes) or hashes is None:
            raise LedgerError(f"entry {index} of the genesis block does not come with its inclusion proof")
        try:
            merkle.verify_inclusion(merkle.leaf_hash(data), index, size, hashes, root)
        except LedgerError as e:
            raise LedgerError(f"entry {index} of the genesis block is not entry {index} of the signed log: {e}") from e
    return join_genesis(_decode_all(d for d in datas if isinstance(d, bytes)))
