"""C2SP tlog-tiles: tile paths, tiles and entry bundles from a ledger, and a client that verifies from tiles alone.

https://c2sp.org/tlog-tiles serves an RFC 6962/9162 Merkle log as static
resources:

* ``/checkpoint``: the signed note;
* ``/tile/<L>/<N>[.p/<W>]``: hash tiles. Tile ``N`` at level ``L`` holds the
  hashes ``MTH(D[(N*256+i) * 256**L : (N*256+i+1) * 256**L])`` for ``i`` in
  ``0..W-1`` (``W = 256`` for a full tile, 32 bytes each) — in this project's
  terms the stored perfect subtree ``node(8*L, N*256+i)``. ``N`` is written in
  zero-padded 3-digit path elements, all but the last prefixed with ``x``
  (1234067 → ``x001/x234/067``); ``W`` (1..255, no leading zeros) only for
  partial tiles. The partial tile of level ``L`` for tree size ``s`` has width
  ``floor(s / 256**L) mod 256``;
* ``/tile/entries/<N>[.p/<W>]``: entry bundles, each entry a big-endian
  ``uint16`` length then its bytes.

:class:`TilesClient` fetches only these resources (through ``urllib`` or an
injected ``fetch(path) -> bytes``), checks the checkpoint signature with the
log's key, and proves inclusion and consistency by recomputing the proof
hashes from tiles: a wrong tile can only make a check fail, never pass.
No flwr or torch here.
"""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from flower_chain.ledger import merkle
from flower_chain.ledger.checkpoint import Checkpoint, verify_checkpoint
from flower_chain.ledger.errors import CheckpointError, LedgerError, ProofError
from flower_chain.ledger.text import is_decimal

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileError",
    "TilePath",
    "TilesClient",
    "decode_bundle",
    "encode_bundle",
    "encode_index",
    "parse_tile_path",
    "partial_width",
    "tile_path",
]

TILE_HEIGHT = 8
TILE_WIDTH = 256
MAX_LEVEL = 63
_MAX_INDEX_ELEMENTS = 8  # 256**... never needs more than 2**64 / 1000**7 ≈ 18447 → 7 elements; 8 is slack


class TileError(LedgerError):
    """A malformed tile path, or a tile or bundle that does not decode."""


@dataclass(frozen=True)
class TilePath:
    """A parsed tile path: ``level`` (``None`` for an entry bundle), ``index`` and ``width`` (256 = full)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def is_bundle(self) -> bool:
        return self.level is None

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def encode_index(n: int) -> str:
    """``N`` as zero-padded 3-digit path elements, all but the last prefixed with ``x``."""
    if n < 0:
        raise TileError(f"tile index {n} is negative")
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


def tile_path(level: int | None, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` or, for ``level=None``, ``tile/entries/<N>[.p/<W>]``."""
    if level is not None and not 0 <= level <= MAX_LEVEL:
        raise TileError(f"tile level {level} outside 0..{MAX_LEVEL}")
    if not 1 <= width <= TILE_WIDTH:
        raise TileError(f"tile width {width} outside 1..{TILE_WIDTH}")
    head = "entries" if level is None else str(level)
    tail = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{head}/{encode_index(index)}{tail}"


def _decimal(s: str, what: str) -> int:
    if not is_decimal(s) or (len(s) > 1 and s[0] == "0"):
        raise TileError(f"{what} {s[:20]!r} is not a decimal number without leading zeros")
    return int(s)


def parse_tile_path(path: str) -> TilePath:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` (a leading ``/`` is allowed).

    Raises
    ------
    TileError
        Anything that is not exactly the spec's encoding: leading zeros in
        ``L`` or ``W``, ``W`` outside 1..255, index elements that are not 3
        digits, a missing or extra ``x``, a non-canonical ``x000`` prefix.
    """
    parts = path.lstrip("/").split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileError("a tile path starts with tile/<L>/ or tile/entries/")
    if parts[1] == "entries":
        level = None
    else:
        level = _decimal(parts[1], "tile level")
        if level > MAX_LEVEL:
            raise TileError(f"tile level {level} outside 0..{MAX_LEVEL}")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width = _decimal(rest[-1], "tile width")
        if not 1 <= width < TILE_WIDTH:
            raise TileError(f"partial tile width {width} outside 1..255")
        rest = rest[:-2] + [rest[-2][:-2]]
    if not 1 <= len(rest) <= _MAX_INDEX_ELEMENTS:
        raise TileError("tile index has no or too many path elements")
    n = 0
    for i, el in enumerate(rest):
        last = i == len(rest) - 1
        digits = el if last else (el[1:] if el.startswith("x") else None)
        if digits is None or len(digits) != 3 or not is_decimal(digits):
            raise TileError(f"tile index element {el[:10]!r} is not {'NNN' if last else 'xNNN'}")
        n = n * 1000 + int(digits)
    if len(rest) > 1 and rest[0] == "x000":
        raise TileError("tile index has a leading x000 element")
    return TilePath(level, n, width)


def partial_width(level: int, size: int) -> int:
    """Width of the partial tile at ``level`` for a tree of ``size`` leaves (0: none)."""
    return (size >> (TILE_HEIGHT * level)) % TILE_WIDTH


def tile_width_for(level: int, index: int, size: int) -> int:
    """Width of tile ``index`` at ``level`` in a tree of ``size`` leaves: 256, the partial width, or 0."""
    span = 1 << (TILE_HEIGHT * (level + 1))
    if (index + 1) * span <= size:
        return TILE_WIDTH
    if index * span < size:
        return partial_width(level, size)
    return 0


def tile_hashes(node: Callable[[int, int], bytes], t: TilePath) -> bytes:
    """The bytes of hash tile ``t`` from a stored perfect-subtree source ``node(level, index)``."""
    if t.level is None:
        raise TileError("an entry bundle is not a hash tile")
    lvl = TILE_HEIGHT * t.level
    base = t.index * TILE_WIDTH
    return b"".join(node(lvl, base + i) for i in range(t.width))


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """An entry bundle: each entry as big-endian ``uint16`` length then its bytes."""
    out = bytearray()
    for e in entries:
        if len(e) > 0xFFFF:
            raise TileError(f"an entry of {len(e)} bytes does not fit the uint16 length of an entry bundle")
        out += struct.pack(">H", len(e)) + e
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    """Split an entry bundle into its entries; raise :class:`TileError` on truncation."""
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise TileError("entry bundle ends inside a length prefix")
        (n,) = struct.unpack_from(">H", data, i)
        if i + 2 + n > len(data):
            raise TileError("entry bundle ends inside an entry")
        out.append(bytes(data[i + 2 : i + 2 + n]))
        i += 2 + n
    return out


def _split_hashes(data: bytes, width: int, what: str) -> list[bytes]:
    if len(data) != width * merkle.HASH_SIZE:
        raise ProofError(f"{what} has {len(data)} bytes, expected {width * merkle.HASH_SIZE}")
    return [data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]


def http_fetcher(base_url: str, timeout: float = 10.0) -> Callable[[str], bytes]:
    """A ``fetch(path) -> bytes`` over HTTP GET with ``urllib`` (404 and errors raise :class:`TileError`)."""
    base = base_url.rstrip("/") + "/"

    def fetch(path: str) -> bytes:
        try:
            with urllib.request.urlopen(base + path.lstrip("/"), timeout=timeout) as r:  # noqa: S310 - caller's URL
                body: bytes = r.read()
                return body
        except urllib.error.HTTPError as e:
            raise TileError(f"GET {path}: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            raise TileError(f"GET {path}: {e}") from e

    return fetch


class TilesClient:
    """Verifies a tlog-tiles log using nothing but its HTTP resources and the log's public key.

    Parameters
    ----------
    source : str or callable
        The log's URL prefix (``http://host:port``), or ``fetch(path) -> bytes``.
    log_key : bytes
        The log's raw Ed25519 public key (the checkpoint's signer).
    origin : str, optional
        The expected checkpoint origin.
    timeout : float
        Per-request timeout for the built-in HTTP fetcher.

    Notes
    -----
    Full tiles are cached (they are immutable); partial tiles are cached per
    width. Each proof is recomputed from tiles and then checked against a
    checkpoint verified with ``log_key``, so the client trusts no tile.
    """

    def __init__(
        self, source: str | Callable[[str], bytes], log_key: bytes, *, origin: str | None = None, timeout: float = 10.0
    ) -> None:
        self.fetch = http_fetcher(source, timeout) if isinstance(source, str) else source
        self.log_key = log_key
        self.origin = origin
        self._tiles: dict[tuple[int, int, int], list[bytes]] = {}
        self.fetches = 0

    # -- resources ---------------------------------------------------------------------------------
    def checkpoint(self) -> tuple[Checkpoint, str]:
        """Fetch ``/checkpoint`` and verify it; return the checkpoint and the note."""
        note = self._get("checkpoint").decode("utf-8", errors="strict")
        try:
            cp = verify_checkpoint(note, self.log_key, origin=self.origin)
        except (CheckpointError, LedgerError) as e:
            raise ProofError(f"checkpoint: {e}") from e
        return cp, note

    def verify_note(self, note: str) -> Checkpoint:
        """Verify a checkpoint note obtained elsewhere (a receipt, an older fetch) with the log key."""
        try:
            return verify_checkpoint(note, self.log_key, origin=self.origin)
        except (CheckpointError, LedgerError) as e:
            raise ProofError(f"checkpoint: {e}") from e

    def _get(self, path: str) -> bytes:
        self.fetches += 1
        return self.fetch(path)

    def tile(self, level: int, index: int, size: int) -> list[bytes]:
        """The hashes of tile ``index`` at ``level`` as it is in a tree of ``size`` leaves."""
        width = tile_width_for(level, index, size)
        if width == 0:
            raise ProofError(f"tile {level}/{index} does not exist in a tree of size {size}")
        key = (level, index, width)
        if key not in self._tiles:
            data = self._get(tile_path(level, index, width))
            self._tiles[key] = _split_hashes(data, width, f"tile {tile_path(level, index, width)}")
        return self._tiles[key]

    def node_source(self, size: int) -> Callable[[int, int], bytes]:
        """``node(level, index)`` for perfect subtrees inside a tree of ``size`` leaves, from tiles."""

        def node(level: int, index: int) -> bytes:
            tl, r = divmod(level, TILE_HEIGHT)
            first = index << r  # first tile-level-tl hash under this node
            t_index, off = divmod(first, TILE_WIDTH)
            hashes = self.tile(tl, t_index, size)
            part = hashes[off : off + (1 << r)]
            if len(part) != 1 << r:
                raise ProofError(f"subtree ({level}, {index}) is not complete in a tree of size {size}")
            return merkle.root(part)

        return node

    def entries(self, start: int, end: int, size: int) -> Iterator[bytes]:
        """Entries ``start <= i < end`` from entry bundles, each checked against the level-0 tile of ``size``."""
        if not 0 <= start <= end <= size:
            raise ProofError(f"entries {start}..{end} are not in a tree of size {size}")
        i = start
        while i < end:
            n = i // TILE_WIDTH
            width = tile_width_for(0, n, size)
            bundle = decode_bundle(self._get(tile_path(None, n, width)))
            if len(bundle) != width:
                raise ProofError(f"entry bundle {n} holds {len(bundle)} entries, expected {width}")
            leaves = self.tile(0, n, size)
            for j, data in enumerate(bundle):
                if merkle.leaf_hash(data) != leaves[j]:
                    raise ProofError(f"entry {n * TILE_WIDTH + j} does not hash to its level-0 tile hash")
            for j in range(i - n * TILE_WIDTH, min(width, end - n * TILE_WIDTH)):
                yield bundle[j]
            i = (n + 1) * TILE_WIDTH

    # -- proofs ------------------------------------------------------------------------------------
    def root(self, size: int) -> bytes:
        """The root of the tree of ``size`` leaves, recomputed from tiles."""
        return merkle.range_from_nodes(self.node_source(size))(0, size)

    def verify_tree(self, cp: Checkpoint) -> None:
        """Check that the tiles of ``cp.size`` hash to ``cp``'s root."""
        if self.root(cp.size) != cp.root_hash:
            raise ProofError(f"the tiles of size {cp.size} do not hash to the checkpoint root")

    def verify_inclusion(self, entry: bytes, index: int, cp: Checkpoint) -> list[bytes]:
        """Prove entry ``index`` (its bytes ``entry``) is in the verified checkpoint ``cp``; return the proof."""
        if not 0 <= index < cp.size:
            raise ProofError(f"entry {index} is not in a log of size {cp.size}")
        proof = merkle.inclusion_proof_from(merkle.range_from_nodes(self.node_source(cp.size)), index, cp.size)
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, cp.size, proof, cp.root_hash)
        return proof

    def verify_consistency(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        """Prove the log of ``new`` extends the log of ``old`` (both verified); return the proof."""
        if old.origin != new.origin:
            raise ProofError(f"checkpoints of different logs: {old.origin!r} and {new.origin!r}")
        if old.size > new.size:
            raise ProofError(f"the old checkpoint ({old.size}) is larger than the new one ({new.size})")
        proof = merkle.consistency_proof_from(merkle.range_from_nodes(self.node_source(new.size)), old.size, new.size)
        merkle.verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
        return proof
