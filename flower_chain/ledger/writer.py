"""The server side of the ledger: builds, signs and appends blocks; serves proofs.

:class:`LedgerWriter` keeps the O(log n) compact range of the log so each
append costs O(entries), signs the block header and a C2SP checkpoint for
the log after the block, and hands the backend everything to store in one
atomic append.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import genesis as genesis_mod
from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import FORMAT_VERSION, ZERO_HASH, BlockHeader, StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, head_line, sign_checkpoint
from flower_chain.ledger.entries import Entry, GenesisEntry, RevocationEntry
from flower_chain.ledger.errors import AppendError, LedgerError
from flower_chain.ledger.keys import key_id, raw_public


def read_genesis(ledger: Ledger) -> GenesisEntry:
    """The genesis of a ledger with its whole keyring (:func:`flower_chain.ledger.genesis.read_genesis`: the
    genesis entry and the ``keys`` entries that continue its keyring in block 0)."""
    return genesis_mod.read_genesis(ledger)


_versions: weakref.WeakKeyDictionary[Ledger, int] = weakref.WeakKeyDictionary()


def digest_version_of(ledger: Ledger) -> int:
    """The array digest version every digest of ``ledger`` uses (its genesis' ``digest_version``).

    What a reader passes to :func:`flower_chain.ledger.arrays.array_digest` and
    :func:`~flower_chain.ledger.arrays.stream_digest`. Read once per ledger object (a genesis never
    changes); raises :class:`LedgerError` when the ledger has no genesis.
    """
    try:
        return _versions[ledger]
    except (KeyError, TypeError):
        pass
    version = read_genesis(ledger).digest_version
    try:
        _versions[ledger] = version
    except TypeError:  # a backend object that takes no weak reference: read it every time
        pass
    return version


def origin_for(federation_id: str) -> str:
    """The checkpoint origin line of a federation's log."""
    return f"flower-chain/{federation_id}"


class LedgerWriter:
    """Appends signed blocks to a ledger backend.

    Parameters
    ----------
    ledger : Ledger
        The backend; it must be empty (then call :meth:`init`) or hold a
        genesis signed by ``server_key``.
    server_key : Ed25519PrivateKey
        The key that signs block headers and checkpoints.
    clock : callable, optional
        Returns seconds since the epoch (for tests).
    """

    def __init__(
        self, ledger: Ledger, server_key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ledger = ledger
        self.server_key = server_key
        self.clock = clock
        self.genesis: GenesisEntry | None = None
        self._range = merkle.CompactRange()
        self._head: StoredBlock | None = None
        self.listeners: list[
            Callable[[StoredBlock], object]
        ] = []  # called with each block once it is durable (e.g. an anchor publisher)
        if ledger.block_count():
            self._load()

    def _load(self) -> None:
        self.genesis = read_genesis(self.ledger)
        if self.genesis.server_key != raw_public(self.server_key):
            raise LedgerError(
                f"{self.ledger.uri} was started by server key {key_id(self.genesis.server_key)}, "
                f"not by this server key {key_id(self.server_key)}: pass the ledger's own server key"
            )
        self._head = self.ledger.head()
        if self._head is None:  # read_genesis found a genesis block just above
            raise LedgerError(f"{self.ledger.uri}: the ledger is empty (no genesis block)")
        h = self._head.header
        self._range = merkle.CompactRange.from_nodes(h.log_size, self.ledger.node)
        if self._range.root() != h.log_root:
            raise LedgerError(f"{self.ledger.uri}: stored subtree hashes do not match the head's log root")

    # -- state -----------------------------------------------------------------------------------
    @property
    def federation_id(self) -> str:
        if self.genesis is None:
            raise LedgerError("the ledger has no genesis yet")
        return self.genesis.federation_id

    @property
    def origin(self) -> str:
        return origin_for(self.federation_id)

    @property
    def head(self) -> StoredBlock | None:
        return self._head

    @property
    def head_hash(self) -> bytes:
        return self._head.hash if self._head else ZERO_HASH

    @property
    def log_size(self) -> int:
        return self._range.size

    def check_head(self) -> None:
        """Raise :class:`AppendError` if the stored head is not the block this writer appended last."""
        self.ledger.reload()
        stored = self.ledger.head()
        if (stored.hash if stored else None) != (self._head.hash if self._head else None):
            raise AppendError(
                f"{self.ledger.uri} changed under the server: its head is no longer the block this server "
                "appended last (another writer, or an edit). Stop, run `flower-chain ledger verify`, and "
                "start again from a verified ledger"
            )

    # -- appending -------------------------------------------------------------------------------
    def init(self, genesis: GenesisEntry) -> StoredBlock:
        """Append the genesis block (height 0): the genesis entry, followed by ``keys`` entries when its
        keyring does not fit one tlog-tiles entry (:func:`flower_chain.ledger.genesis.split_genesis`)."""
        if self.ledger.block_count():
            raise AppendError(f"{self.ledger.uri} already has a genesis block")
        if genesis.server_key != raw_public(self.server_key):
            raise AppendError("the genesis names another server key than the one signing")
        entries = genesis_mod.split_genesis(genesis)
        self.genesis = genesis
        return self.append(0, entries)

    def append(
        self,
        round: int,
        entries: Sequence[Entry | bytes],
        *,
        model_before: bytes = b"",
        model_after: bytes = b"",
        state_after: bytes = b"",
    ) -> StoredBlock:
        """Sign and append one block holding ``entries``; return it once it is durable."""
        if self.genesis is None:
            raise AppendError("append the genesis first (LedgerWriter.init)")
        data = [e if isinstance(e, bytes) else e.to_bytes() for e in entries]
        leaves = [merkle.leaf_hash(d) for d in data]
        block_range = merkle.CompactRange()
        log_range = merkle.CompactRange(self._range.size, list(self._range.hashes))
        nodes = []
        for lh in leaves:
            block_range.append(lh)
            nodes.extend(log_range.append(lh))
        header = BlockHeader(
            version=FORMAT_VERSION,
            federation_id=self.genesis.federation_id,
            height=self._head.header.height + 1 if self._head else 0,
            round=int(round),
            timestamp_ms=max(int(self.clock() * 1000), self._head.header.timestamp_ms if self._head else 0),
            prev_hash=self.head_hash,
            entries_root=block_range.root(),
            entry_count=len(data),
            model_before=bytes(model_before),
            model_after=bytes(model_after),
            state_after=bytes(state_after),
            log_size=log_range.size,
            log_root=log_range.root(),
        )
        hb = header.to_bytes()
        head = head_line(header.height, hashlib.sha256(hb).digest())  # cosigners vouch for the head block too
        cp = sign_checkpoint(
            Checkpoint(origin_for(header.federation_id), header.log_size, header.log_root, (head,)), self.server_key
        )
        block = StoredBlock(hb, self.server_key.sign(hb), cp)
        self.ledger.append(block, data, nodes)
        self._range, self._head = log_range, block
        for listener in self.listeners:
            listener(block)
        return block

    def revoke(self, kid: str, reason: str) -> StoredBlock:
        """Append a block revoking client key ``kid``: later updates it signs are rejected as ``revoked-key``.

        The block leaves the model where it is (the head's ``model_after`` and
        ``state_after``) and belongs to the head's round.
        """
        if self.genesis is None or self._head is None:
            raise AppendError("the ledger has no genesis to revoke a key of")
        if kid not in self.genesis.client_keys:
            raise LedgerError(f"key {kid} is not in the genesis keyring")
        self.check_head()
        h = self._head.header
        model = h.model_after or _last_model(self.ledger, h.height)
        return self.append(
            h.round,
            [RevocationEntry(key_id=kid, reason=str(reason), created_ms=int(self.clock() * 1000))],
            model_before=model,
            model_after=model,
            state_after=h.state_after,
        )

    def checkpoint(self) -> str:
        """The signed checkpoint of the log at the head."""
        if self._head is None:
            raise LedgerError("the ledger is empty")
        return self._head.checkpoint


def _last_model(ledger: Ledger, height: int) -> bytes:
    """The ``model_after`` of the newest block at or below ``height`` that records one (b"" if none)."""
    for h in range(height, -1, -1):
        after = ledger.block(h).header.model_after
        if after:
            return after
    return b""


def config_digest(config: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical encoding of a configuration map."""
    from flower_chain.ledger.encoding import encode

    return hashlib.sha256(encode({str(k): v for k, v in config.items()})).digest()
