"""SecAgg+ unmasking: the code the server runs and the auditor re-runs on the transcript alone.

Flower's primitives (Shamir over GF(2^128) chunks, ECDH + HKDF pairwise keys) and
:mod:`flower_chain.ledger.secagg_masks` (generators, dequantization). Every function is total on hostile
input: a problem comes back as text, never as an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    public_key_to_bytes,
)

from flower_chain.ledger.secagg import seed_digest, share_digest
from flower_chain.ledger.secagg_masks import add_mask


def id_order(node_id: str) -> tuple[int, str]:
    """A total sort key for node ids: numeric order for decimal text, never an exception on other text."""
    return (len(node_id), node_id) if isinstance(node_id, str) else (0, "")


def combine(shares: Sequence[bytes], threshold: int) -> bytes | str:
    """The secret of ``shares`` (at least ``threshold`` of them), or why it cannot be rebuilt."""
    shares = [s for s in shares if isinstance(s, bytes)]
    if len(shares) < threshold:
        return f"{len(shares)} shares revealed, {threshold} needed"
    lengths = {len(s) for s in shares}
    if len(lengths) != 1 or (lengths.pop() - 4) % 16 or len(shares[0]) <= 4:
        return "the shares have different or impossible lengths"
    if len({s[:4] for s in shares}) != len(shares):
        return "two shares have the same index"
    try:
        return combine_shares(list(shares))
    except Exception as e:  # noqa: BLE001 - shares that do not reconstruct are a finding, never a crash
        return f"the shares do not reconstruct ({type(e).__name__})"


def rebuild(
    shares: Mapping[str, bytes],
    committed: Mapping[str, bytes],
    threshold: int,
    check: Callable[[bytes], str | None],
) -> tuple[bytes | None, list[str], str]:
    """Rebuild a secret from the shares revealed by each node, in one pass.

    ``committed`` maps each holder to the digest (:func:`share_digest`) of the share the owner created for
    it and signed at share-keys. A revealed share whose digest is not that one is wrong: it is named and
    left out; the secret is combined from the verified shares only, then ``check`` (the owner's commitment
    to the secret) must accept it. Returns ``(secret, holders whose share is wrong, problem)``.
    """
    items = sorted(((n, s) for n, s in shares.items() if isinstance(s, bytes)), key=lambda t: id_order(t[0]))
    good = [s for n, s in items if committed.get(n) == share_digest(s)]
    bad = [n for n, s in items if committed.get(n) != share_digest(s)]
    if len(good) < threshold:
        return None, bad, f"{len(good)} of the {len(items)} shares revealed are the committed ones, {threshold} needed"
    secret = combine(good, threshold)
    if isinstance(secret, str):
        return None, bad, f"{secret} (the owner's committed shares are inconsistent)"
    problem = check(secret)
    if problem:
        return None, bad, f"{problem} (the owner's committed shares are inconsistent)"
    return secret, bad, ""


def public_key_problem(raw: bytes) -> str | None:
    """Why a stage 0 public key is unusable, or ``None``: it is parsed and used exactly as the nodes will
    (``bytes_to_public_key``, then ECDH + HKDF with ``generate_shared_key``), so a key that passes here
    cannot fail at a neighbour."""
    try:
        key = bytes_to_public_key(raw)
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            return f"is not a SECP384R1 public key ({type(key).__name__})"
        generate_shared_key(_probe(), key)
    except Exception as e:  # noqa: BLE001 - whatever a hostile key does, it is a verdict
        return f"does not parse as a public key ({type(e).__name__})"
    return None


_PROBE: list[ec.EllipticCurvePrivateKey] = []


def _probe() -> ec.EllipticCurvePrivateKey:
    """A throwaway private key to try the key agreement with (made once)."""
    if not _PROBE:
        _PROBE.append(generate_key_pairs()[0])
    return _PROBE[0]


def check_seed(secret: bytes, committed: bytes) -> str | None:
    """Problem if a rebuilt mask seed is not the one the node committed to in its masked-input statement."""
    return None if seed_digest(secret) == committed else "the rebuilt mask seed is not the one the node committed"


def check_key(secret: bytes, pk1: bytes) -> str | None:
    """Problem if a rebuilt private key is not the one behind the node's stage 0 public key ``pk1``."""
    try:
        if public_key_to_bytes(bytes_to_private_key(secret).public_key()) == pk1:
            return None
    except Exception:  # noqa: BLE001 - not a key at all
        return "the rebuilt secret is not a private key"
    return "the rebuilt private key does not match the node's public key"


def unmask(
    vectors: Mapping[str, Sequence[np.ndarray]],
    seeds: Mapping[str, bytes],
    keys: Mapping[str, bytes],
    pk1: Mapping[str, bytes],
    sources: Mapping[str, Sequence[str]],
    mod_range: int,
    generator: str,
) -> list[np.ndarray] | str:
    """The sum of the live nodes' inputs: their masked vectors minus their own masks and the pairwise masks
    they shared with dropped nodes.

    Parameters
    ----------
    vectors : mapping
        Live node -> its masked vector (int64 arrays, the weight first).
    seeds : mapping
        Live node -> its rebuilt mask seed.
    keys : mapping
        Dropped node -> its rebuilt first private key.
    pk1 : mapping
        Node -> its first public key (stage 0).
    sources : mapping
        Live node -> the nodes whose shares it received (it added a pairwise mask with each).
    """
    live = sorted(vectors, key=id_order)
    if not live:
        return "no live input"
    outside = [(u, w) for u in live for w in sources.get(u, ()) if w not in vectors and w not in keys]
    if outside:  # a pairwise mask nobody can remove: the sum would be garbage
        u, w = outside[0]
        return f"node {u} masked with node {w}, which is neither live nor a dropped node whose key was rebuilt"
    shapes = [np.asarray(a).shape for a in vectors[live[0]]]
    total = [np.zeros(s, dtype=np.int64) for s in shapes]
    try:
        signed: list[tuple[bytes, int]] = [(seeds[nid], -1) for nid in live]
        for v, secret in sorted(keys.items(), key=lambda t: id_order(t[0])):
            sk = bytes_to_private_key(secret)
            for u in live:  # u added +mask when u > v, -mask otherwise: take it back out
                if v in sources.get(u, ()):
                    signed.append(
                        (generate_shared_key(sk, bytes_to_public_key(pk1[u])), -1 if id_order(u) > id_order(v) else 1)
                    )
        for nid in live:  # every value is below 2**32: int64 sums of up to 2**31 terms cannot overflow
            for acc, a in zip(total, vectors[nid]):
                acc += a
        for secret, sign in signed:  # the keystream added where it lands: no mask array per secret
            add_mask(total, secret, mod_range, generator, sign)
    except Exception as e:  # noqa: BLE001 - a missing seed, key or public key is a finding
        return f"cannot unmask: {type(e).__name__}: {e}"
    return [a & (mod_range - 1) for a in total]


def rebuild_all(
    replies: Mapping[str, dict[str, Any]],
    live: Sequence[str],
    dropped: Sequence[str],
    threshold: int,
    seed_digests: Mapping[str, bytes],
    pk1: Mapping[str, bytes],
    committed: Mapping[str, Mapping[str, Sequence[bytes]]],
) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, list[str]], str]:
    """Rebuild the live nodes' mask seeds and the dropped nodes' keys from the stage 3 replies.

    ``replies``: revealing node -> its unmask statement reply; ``committed``: owner -> its share-keys
    ``shares`` (holder -> [seed share digest, key share digest]). Returns ``(seeds, keys, wrong, problem)``
    where ``wrong`` maps a secret's owner to the nodes that revealed a share of it other than the committed
    one, and ``problem`` names the first secret that could not be rebuilt ('' when all were).
    """
    seeds: dict[str, bytes] = {}
    keys: dict[str, bytes] = {}
    wrong: dict[str, list[str]] = {}
    problem = ""
    for owner_set, field, slot, out, check in (
        (live, "seed_shares", 0, seeds, lambda n: lambda s: check_seed(s, seed_digests.get(n, b""))),
        (dropped, "key_shares", 1, keys, lambda n: lambda s: check_key(s, pk1.get(n, b""))),
    ):
        for n in owner_set:
            shares = {r: rep[field][n] for r, rep in replies.items() if n in rep.get(field, {})}
            digests = {h: d[slot] for h, d in committed.get(n, {}).items() if len(d) == 2}
            secret, bad, why = rebuild(shares, digests, threshold, check(n))
            if bad:
                wrong[n] = bad
            if secret is None:
                what = "mask seed" if field == "seed_shares" else "key"
                problem = problem or f"node {n}'s {what}: {why}"
            else:
                out[n] = secret
    return seeds, keys, wrong, problem


def one_sided_text(u: str, w: str) -> str:
    """What the signatures prove about a one-sided pair ``(u, w)`` (docs/secagg.md §4), and no more."""
    return (
        f"nodes {u} and {w} did not both mask with each other, the masks do not cancel: {u} signed a pairwise mask with {w}; {w}, "
        f"forwarded {u}'s shares, signed its sources without {u} (either {w} left {u} out or {u}'s shares for "
        f"{w} did not open to {u}'s commitment: the signatures do not say which)"
    )


def one_sided_pairs(sources: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Live pairs ``(u, w)`` where ``u`` masked with ``w`` but ``w`` not with ``u``: their masks do not cancel."""
    live = set(sources)
    return sorted(
        ((u, w) for u, srcs in sources.items() for w in srcs if w in live and u not in sources.get(w, ())),
        key=lambda t: (id_order(t[0]), id_order(t[1])),
    )
