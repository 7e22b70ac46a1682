"""SecAgg+ audit checks that tie what a node signed to what the ledger committed.

- The masked-input request is recomputed from the share-keys statements: each source's signed ciphertext
  digest and share commitments for the holder. A holder that signed another request was forwarded
  something no owner signed, so a share it later reveals is never held against it.
- Every live node's signed ``sources`` lies within the committed live and dropped sets: a pairwise mask with
  a node outside both can never be removed, and the aggregate would be garbage.
- No two accepted setup replies carry the same public key (reported as a pair: nothing shows which copied).
"""

from __future__ import annotations

from typing import Any

from flower_chain.audit.secagg_transcript import Finding
from flower_chain.ledger.secagg import MASKED, SETUP, SHARE_KEYS, masked_request_digest

#: The finding a holder's masked-input record gets when its signed request is not the ledger's.
FORWARDED = (
    "the server forwarded ciphertexts or share commitments other than the ones the owners signed at "
    "share-keys (the node signed what it was forwarded; the server's doing, not the node's)"
)


def masked_request(acc: dict[str, dict[str, Any]], nid: str) -> bytes:
    """The digest of the masked-input request ``nid`` must have been sent, from the accepted share-keys
    statements alone (every accepted owner that encrypted shares for it)."""
    digests: dict[str, bytes] = {}
    shares: dict[str, Any] = {}
    for src, rec in acc[SHARE_KEYS].items():
        reply = rec.statement.reply
        if nid in reply["sent"]:
            digests[src] = reply["sent"][nid]
            shares[src] = reply["shares"].get(nid, [])
    return masked_request_digest(digests, shares)


def closure_findings(r: int, acc: dict, live: list[str], dropped: list[str], found: list[Finding]) -> None:
    """Each live node's signed ``sources`` must be within the committed live and dropped nodes.

    Whom a finding names follows from what the signatures show, never the source itself (it may never have
    taken part). When ``nid``'s signed masked-input request is the one the accepted share-keys statements
    give and none of them has the source sending ``nid`` shares, ``nid`` signed a mask with a node it was never
    forwarded shares from: the finding is on ``nid``. Otherwise (the source did send shares, or the server
    forwarded ciphertexts it did not record as accepted) the commitment left out a node the server had put
    into the round: the finding is on the server's commitment (node ``""``).
    """
    committed = set(live) | set(dropped)
    for nid in live:
        rec = acc[MASKED].get(nid)
        if rec is None:
            continue
        as_recorded = masked_request(acc, nid) == rec.statement.request
        for w in rec.statement.reply["sources"]:
            if w in committed:
                continue
            sent = acc[SHARE_KEYS].get(w)
            if as_recorded and (sent is None or nid not in sent.statement.reply["sent"]):
                found.append(
                    Finding(
                        r,
                        MASKED,
                        nid,
                        f"signed a pairwise mask with node {w}, which sent it no shares (the request it signed is "
                        "the recorded one, and no accepted share-keys statement has that node sending it shares) "
                        "and which the commitment names neither live nor dropped: its mask is never removed",
                    )
                )
            else:
                found.append(
                    Finding(
                        r,
                        "commit",
                        "",
                        f"node {nid} signed a pairwise mask with node {w}, which the server had put into the round "
                        f"(shares from it were forwarded), and the commitment names node {w} neither live nor "
                        "dropped: its mask is never removed (the aggregate is not the sum of the inputs)",
                    )
                )


def duplicate_key_findings(r: int, acc: dict, found: list[Finding]) -> None:
    """Two accepted setup replies with one public key, reported as a pair under the server's setup stage.

    Both statements are signed by their own identity keys and neither proves it holds the secret key, so the
    ledger cannot tell which node copied the other's; the server accepted both (its judge rejects the reply it
    judges second, an order the server chooses).
    """
    owner: dict[bytes, str] = {}
    for nid, rec in sorted(acc[SETUP].items(), key=lambda t: (len(t[0]), t[0])):
        for name in ("pk1", "pk2"):
            key = rec.statement.reply[name]
            first = owner.setdefault(key, nid)
            if first != nid:
                found.append(
                    Finding(
                        r,
                        SETUP,
                        "",
                        f"nodes {first} and {nid} set up with one public key ({name}); the ledger cannot tell which "
                        "holds its secret, and the server accepted both",
                    )
                )
