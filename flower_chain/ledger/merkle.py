"""RFC 9162 Merkle tree hashing, proofs and proof verification (SHA-256).

Everything here follows RFC 9162 (Certificate Transparency 2.0) section 2.1,
which restates RFC 6962 section 2.1:

* §2.1.1  ``MTH({}) = SHA-256()``, ``MTH({d0}) = SHA-256(0x00 || d0)`` and
  ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` with ``k`` the
  largest power of two smaller than ``n``.
* §2.1.3  inclusion proofs (``PATH``) and their verification (§2.1.3.2).
* §2.1.4  consistency proofs (``PROOF``/``SUBPROOF``) and their verification
  (§2.1.4.2).

Proof generation is written against a *subtree hash source*: a callable
``hash_range(start, end) -> bytes`` that returns ``MTH(D[start:end])``. For a
list of leaf hashes that is computed recursively; a ledger backend serves it
from stored perfect-subtree hashes, so a proof over a million entries needs
O(log^2 n) lookups and never loads the leaves.

Policy for ``size1 == 0`` (RFC 9162 defines consistency only for
``0 < size1 <= size2``): the empty tree is a prefix of every tree, so there is
nothing to prove. We accept it only with an **empty** proof and only when
``root1`` is the empty-tree hash ``SHA-256("")``; anything else (a non-empty
proof, any other ``root1``) is rejected. Between equal sizes the proof must
be empty and the roots equal; every other hash given to a verifier must be
exactly 32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from flower_chain.ledger.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

HashRange = Callable[[int, int], bytes]

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "consistency_proof",
    "consistency_proof_from",
    "inclusion_proof",
    "inclusion_proof_from",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 leaf hash ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hasher(leaf_hashes: Sequence[bytes]) -> HashRange:
    def hash_range(start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return leaf_hashes[start]
        k = _split(n)
        return node_hash(hash_range(start, start + k), hash_range(start + k, end))

    return hash_range


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """Return the Merkle tree hash ``MTH`` of a list of leaf hashes (§2.1.1).

    The empty tree has the root ``SHA-256("")``. Runs in O(n) time.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha, prefix = hashlib.sha256, _NODE_PREFIX
    while len(level) > 1:  # pairing left to right and carrying an odd last node up is exactly MTH
        n = len(level)
        pairs = iter(level)  # zip(it, it) pairs neighbours and drops an odd last node
        nxt = [sha(prefix + left + right).digest() for left, right in zip(pairs, pairs)]
        if n & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def leaf_hashes(data: Iterable[bytes]) -> list[bytes]:
    """Leaf hashes of many entries (one SHA-256 each, no per-call overhead)."""
    sha, prefix = hashlib.sha256, _LEAF_PREFIX
    return [sha(prefix + d).digest() for d in data]


def _check_size(size: int | None, available: int) -> int:
    if size is None:
        return available
    if size < 0 or size > available:
        raise ValueError(f"tree size {size} outside 0..{available}")
    return size


def inclusion_proof_from(hash_range: HashRange, index: int, size: int) -> list[bytes]:
    """``PATH(index, D[0:size])`` of RFC 9162 §2.1.3.1 from a subtree hash source."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            proof.append(hash_range(start + k, end))
            end = start + k
        else:
            proof.append(hash_range(start, start + k))
            start, m = start + k, m - k
    proof.reverse()
    return proof


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Return the inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
    size = _check_size(size, len(leaf_hashes))
    return inclusion_proof_from(_range_hasher(leaf_hashes), index, size)


def consistency_proof_from(hash_range: HashRange, size1: int, size2: int) -> list[bytes]:
    """``PROOF(size1, D[0:size2])`` of RFC 9162 §2.1.4.1 from a subtree hash source.

    ``size1 == 0`` and ``size1 == size2`` give an empty proof.
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"consistency needs 0 <= size1 <= size2, got {size1}, {size2}")
    if size1 == 0 or size1 == size2:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(hash_range(start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(hash_range(start + k, end))
            end = start + k
        else:
            proof.append(hash_range(start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int | None = None) -> list[bytes]:
    """Return the consistency proof between the trees of ``size1`` and ``size2`` leaves."""
    size2 = _check_size(size2, len(leaf_hashes))
    return consistency_proof_from(_range_hasher(leaf_hashes), size1, size2)


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be a {HASH_SIZE}-byte hash")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check an inclusion proof (RFC 9162 §2.1.3.2); raise :class:`ProofError` if it fails.

    ``leaf`` is the leaf *hash*. The proof must be exactly as long as the
    path from the leaf to the root: extra or missing hashes fail.
    """
    _check_hash("leaf hash", leaf)
    _check_hash("root", root_hash)
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
    if index < 0 or size < 0:
        raise ProofError("index and size must not be negative")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof has trailing hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is missing hashes")
    if r != root_hash:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check a consistency proof (RFC 9162 §2.1.4.2); raise :class:`ProofError` if it fails.

    See the module docstring for the ``size1 == 0`` policy.
    """
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
    if size1 < 0 or size2 < 0:
        raise ProofError("sizes must not be negative")
    if size1 > size2:
        raise ProofError(f"first size {size1} is larger than the second size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError("equal sizes but different roots")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ProofError("a tree of size 0 must have the empty-tree root")
        return
    _check_hash("first root", root1)
    _check_hash("second root", root2)
    if size1 == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        if root1 != EMPTY_ROOT:
            raise ProofError("a tree of size 0 must have the empty-tree root")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof has trailing hashes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is missing hashes")
    if fr != root1:
        raise ProofError("consistency proof does not lead to the first root")
    if sr != root2:
        raise ProofError("consistency proof does not lead to the second root")


@dataclass
class CompactRange:
    """The O(log n) state needed to extend an RFC 9162 tree and compute its root.

    Holds the roots of the perfect subtrees that cover ``[0, size)``, largest
    first. :meth:`append` returns the perfect-subtree hashes completed by the
    new leaf as ``(level, index, hash)`` triples (level 0 is the leaf itself),
    which a backend stores to serve proofs later.
    """

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index = self.size
        created = [(0, index, leaf)]
        h, level = leaf, 0
        while (index >> level) & 1:
            h = node_hash(self.hashes.pop(), h)
            level += 1
            created.append((level, index >> level, h))
        self.hashes.append(h)
        self.size += 1
        return created

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Append many leaf hashes at once (the fast path of verification: nothing is returned).

        Works level by level: at each level the new nodes are paired left to
        right (the first one with the range's pending left sibling when the
        level's start index is odd), so the hashing runs in list
        comprehensions instead of one Python loop iteration per leaf.
        """
        sha, prefix = hashlib.sha256, _NODE_PREFIX
        start, cur = self.size, list(leaves)
        if not cur:
            return
        # the range's hashes, smallest subtree last, indexed by level
        by_level = {}
        remaining = self.size
        for h in reversed(self.hashes):
            level = (remaining & -remaining).bit_length() - 1
            by_level[level] = h
            remaining -= 1 << level
        level = 0
        while cur:
            first = start >> level
            if first & 1:
                cur.insert(0, by_level.pop(level))
                first -= 1
            n = len(cur)
            if n & 1:
                by_level[level] = cur[-1]
            pairs = iter(cur)  # zip(it, it) pairs neighbours and drops an odd last node
            cur = [sha(prefix + left + right).digest() for left, right in zip(pairs, pairs)]
            level += 1
            if not cur:
                break
        self.size += len(leaves)
        self.hashes = [by_level[lv] for lv in sorted(by_level, reverse=True)]

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    @classmethod
    def from_nodes(cls, size: int, node: Callable[[int, int], bytes]) -> CompactRange:
        """Rebuild the compact range of a tree of ``size`` leaves from stored perfect subtrees."""
        hashes = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size & (1 << level):
                hashes.append(node(level, start >> level))
                start += 1 << level
        return cls(size=size, hashes=hashes)


def range_from_nodes(node: Callable[[int, int], bytes]) -> HashRange:
    """A subtree hash source over stored perfect subtrees ``node(level, index)``.

    ``MTH(D[start:end])`` for the subtrees that RFC 9162 proofs visit: every
    such range starts at a multiple of a power of two covering its left part,
    so it decomposes into O(log n) perfect subtrees.
    """

    def hash_range(start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return node(n.bit_length() - 1, start // n)
        k = _split(n)
        return node_hash(hash_range(start, start + k), hash_range(start + k, end))

    return hash_range
