"""The end of the SecAgg+ replay (docs/secagg.md §6): the stored masked vectors read back under their committed
digests, and the replayed aggregate compared with the result record and its block, bit for bit.

Every digest uses the ledger's array digest version (its genesis', docs/ledger-format.md §6.1). Nothing raises:
whatever fails is a :class:`Finding`.
"""

from __future__ import annotations

import numpy as np

from flower_chain.audit.secagg_transcript import Finding, RoundTranscript
from flower_chain.ledger.arrays import ArrayMeta, array_digest, array_meta, cast_like, decode_arrays
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.secagg import MASKED
from flower_chain.ledger.secagg_masks import finish_aggregate


def masked_vector(ledger: Ledger, digest: bytes, found: list[Finding], r: int, nid: str, version: int) -> list:
    """A live node's stored masked vector (uint32 arrays), its digest checked under the ledger's ``version``."""
    try:
        named = decode_arrays(ledger.get_blob(digest))
    except LedgerError as e:
        found.append(Finding(r, MASKED, nid, f"the masked input is not in the blob store: {e}"))
        return []
    if array_digest(named, version) != digest:
        found.append(Finding(r, MASKED, nid, "the stored masked input does not match its committed digest"))
    if any(a.dtype != np.uint32 for _, a in named):
        found.append(Finding(r, MASKED, nid, "the stored masked input is not uint32"))
    return [a for _, a in named]  # uint32 (checked above): unmask accumulates into int64 exactly


def base_layout(ledger: Ledger, t: RoundTranscript, found: list[Finding]) -> ArrayMeta | None:
    """(name, shape, dtype) of the round's base model, the blob under the header's ``base_digest`` (checked
    against the commit block's ``model_before`` by the caller): the layout ``model_after`` must keep. The
    result record's ``names``/``dtypes`` are the server's word and are never used."""
    digest = t.header["base_digest"] if t.header is not None else b""
    try:
        named = decode_arrays(ledger.get_blob(digest))
    except (LedgerError, TypeError, ValueError) as e:
        found.append(Finding(t.round, "result", "", f"the base model (model_before) is not in the blob store: {e}"))
        return None
    if array_digest(named, t.digest_version) != digest:
        found.append(Finding(t.round, "result", "", "the stored base model does not match the header's base_digest"))
        return None
    return array_meta(named)


def layout_problem(avg: list, base: ArrayMeta) -> str:
    """Why the replayed average cannot be the base model's next version ('' when it can): one array per base
    array, each of the base array's shape (names and dtypes are then the base's)."""
    if len(avg) != len(base):
        return f"the replayed aggregate has {len(avg)} arrays, the base model {len(base)}"
    for a, (name, shape, _) in zip(avg, base, strict=True):
        if tuple(np.shape(a)) != shape:
            return f"the replayed array {name!r} has shape {np.shape(a)}, the base model's is {shape}"
    return ""


def check_result(t: RoundTranscript, total: list, n_live: int, found: list[Finding], ledger: Ledger) -> bool:
    """Whether the recorded aggregate and ``model_after`` are the replayed ``total``'s, bit for bit (digests
    under the ledger's version, ``t.digest_version``), in the layout of the round's base model: its names,
    shapes and dtypes, never the result record's (R2-5: a dropped, renamed or recast array is a finding)."""
    r, res, header, block, commit = t.round, t.result, t.header, t.result_block, t.commit
    if (
        res is None or header is None or block is None or commit is None
    ):  # the caller checked them: nothing to compare without
        return False
    p = header["params"]
    if sorted(res["live"]) != sorted(commit["live"]):
        found.append(Finding(r, "result", "", "the result counts other live nodes than the commitment"))
    if array_digest([(str(i), a) for i, a in enumerate(total)], t.digest_version) != res["aggregate_digest"]:
        found.append(Finding(r, "result", "", "the recorded aggregate is not the sum of the signed masked inputs"))
        return False
    base = base_layout(ledger, t, found)
    if base is None:
        return False
    if [str(n) for n in res["names"]] != [n for n, _, _ in base] or [np.dtype(d).str for d in res["dtypes"]] != [
        d for _, _, d in base
    ]:
        found.append(Finding(r, "result", "", "the result record names other arrays or dtypes than the base model"))
    try:
        avg = finish_aggregate(total, p["clipping_range"], p["quantization_range"], n_live)
        problem = layout_problem(avg, base)
        if problem:
            found.append(Finding(r, "result", "", problem))
            return False
        named = cast_like([(n, a) for (n, _, _), a in zip(base, avg, strict=True)], [d for _, _, d in base])
    except (ValueError, TypeError, LedgerError) as e:
        found.append(Finding(r, "result", "", f"the aggregate does not dequantize: {e}"))
        return False
    after = array_digest(named, t.digest_version)
    block_after = block.header.model_after
    if after != res["model_after"] or after != block_after:
        found.append(Finding(r, "result", "", "model_after is not the dequantized aggregate (substituted)"))
        return False
    return True
