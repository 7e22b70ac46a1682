"""The status a person reads first: is this ledger VERIFIED, is it AUDITED, and what was not checked.

:func:`ledger_status` runs the checks that were asked for — ``verify`` (with client signatures), the
pinned server key, the keyring (``--keys``), witness cosignatures (``--witness``), the aggregation
replay (audit) — and says which were not asked for. The report and the explorer show the same
:class:`Status`: green ``VERIFIED`` only when the ledger verifies *and* the server key was pinned
(without a pinned key it verifies only against the key it names itself: amber); red ``NOT VERIFIED``
with the reason when any requested check fails. ``AUDITED`` only when every train round was
re-derived bit for bit (never after replaying nothing); ``AUDIT FAILED`` naming the first round
that differs; ``NOT AUDITED`` with why otherwise.

:func:`keyring_names` reads the names keys were created with (``NAME.pub`` in a keyring directory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import LedgerError, VerificationError
from flower_chain.ledger.keys import PUBLIC_SUFFIX, Keyring, key_id, load_public
from flower_chain.ledger.text import safe_text
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import read_genesis

GREEN, AMBER, RED = "verified", "unpinned", "failed"


@dataclass
class Status:
    """The outcome of the requested checks, in words people and pages show."""

    verified: bool = False
    pinned: bool = False
    reason: str = ""
    audited: bool | None = None  # None: not asked for
    audit_text: str = ""
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    server_key_id: str = ""

    @property
    def level(self) -> str:
        """``verified`` (green), ``unpinned`` (amber: verifies, but under no pinned key) or ``failed`` (red)."""
        if not self.verified:
            return RED
        return GREEN if self.pinned else AMBER

    @property
    def headline(self) -> str:
        if not self.verified:
            return "NOT VERIFIED"
        return "VERIFIED" if self.pinned else "VERIFIED (server key not pinned)"

    @property
    def audit_headline(self) -> str:
        return {True: "AUDITED", False: "AUDIT FAILED", None: "NOT AUDITED"}[self.audited]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "pinned": self.pinned,
            "level": self.level,
            "headline": self.headline,
            "reason": self.reason,
            "audited": self.audited,
            "audit_headline": self.audit_headline,
            "audit_text": self.audit_text,
            "checked": list(self.checked),
            "not_checked": list(self.not_checked),
            "server_key_id": self.server_key_id,
        }


def keyring_names(path: str | Path) -> dict[str, str]:
    """Key id -> the name a key was created with (the stem of its ``NAME.pub``) in a keyring directory.

    Raises :class:`~flower_chain.ledger.errors.KeyFileError` for a file that is not a public key.
    """
    p = Path(path)
    if p.is_dir() and not any(p.glob(f"*{PUBLIC_SUFFIX}")) and (p / "keyring").is_dir():
        p = p / "keyring"
    files = sorted(p.glob(f"*{PUBLIC_SUFFIX}")) if p.is_dir() else [p]
    return {key_id(load_public(f)): f.stem for f in files}


def _audit(ledger: Ledger, status: Status) -> None:
    from flower_chain.audit.replay import audit

    try:
        rep = audit(ledger)
    except LedgerError as e:
        status.audited, status.audit_text = False, f"the replay could not run: {safe_text(e, 300)}"
        return
    train, ok = rep.train_rounds, rep.train_rederived
    if rep.mismatches:
        first = rep.mismatches[0]
        status.audited = False
        status.audit_text = (
            f"round {first.round} (block {first.height}) is not what the recorded strategy computes: "
            f"{safe_text(first.detail, 300)}"
        )
    elif train and len(ok) == len(train) and rep.audited:
        status.audited = True
        status.audit_text = (
            f"{len(ok)} of {len(train)} train rounds re-derived bit for bit with "
            f"{safe_text(rep.strategy, 80)} ({rep.updates_replayed} updates replayed)"
        )
    else:
        why = sorted({safe_text(r.detail, 200) for r in rep.not_rederived})
        status.audit_text = (
            f"{len(ok)} of {len(train)} train rounds re-derived"
            + (f"; not re-derivable: {'; '.join(why[:2])}" if why else "")
            + ("" if train else " (no train round recorded)")
        )


def ledger_status(
    ledger: Ledger,
    *,
    server_key: bytes | None = None,
    keys: str | Path | None = None,
    witnesses: Sequence[str] = (),
    quorum: int = 1,
    run_audit: bool = False,
    blobs: bool = False,
) -> Status:
    """Run the requested checks on ``ledger`` and say what passed, what failed and what was not checked.

    Parameters
    ----------
    ledger : Ledger
        The ledger.
    server_key : bytes, optional
        The pinned raw server public key (``--server-key``).
    keys : path, optional
        A keyring directory the genesis must hold exactly (``--keys``).
    witnesses : sequence of str
        Trusted witness cosigner keys (``--witness``); ``quorum`` of them must cosign the head.
    run_audit : bool
        Replay the aggregation of every round (``ledger audit``).
    blobs : bool
        Also check stored model, state and update blobs against their digests.

    Returns
    -------
    Status
        Never raises for a ledger that does not verify: that is ``Status.reason``.
    """
    st = Status(pinned=server_key is not None)
    try:
        rep = verify(ledger, server_key=server_key, client_signatures=True, blobs=blobs)
        st.server_key_id = rep.server_key_id
        st.checked.append(
            f"{rep.blocks} blocks and {rep.entries} entries: hashes, Merkle log, server signatures, "
            f"every verdict's rules; {rep.client_signatures_checked} client signatures"
        )
        if server_key is not None:
            st.checked.append(f"the server key is the pinned one ({rep.server_key_id})")
        else:
            st.not_checked.append(
                f"the server key was not pinned: the ledger verifies under the key it names "
                f"itself ({rep.server_key_id}); pass --server-key"
            )
        if keys is not None:
            _check_keys(ledger, keys, st)
        else:
            st.not_checked.append("the keyring was not compared with the genesis (--keys)")
        if witnesses:
            _check_witnesses(ledger, witnesses, quorum, server_key, st)
        else:
            st.not_checked.append("no witness cosignatures checked (--witness): a split view would go unseen")
        st.not_checked.append(
            "on-chain anchors were not checked (flower-chain ledger verify --anchor ... --contract ...)"
        )
        if not blobs:
            st.not_checked.append("stored models and updates were not hashed against their digests (--blobs)")
        if rep.arrays_unchecked:
            st.not_checked.append(f"the array rules of {rep.arrays_unchecked} accepted updates (arrays not checked)")
        st.verified = True
    except (VerificationError, LedgerError, ValueError) as e:
        st.verified, st.reason = False, safe_text(e, 500)
        st.not_checked = ["the checks after the one that failed were not run"]
        st.audit_text = "not run: the ledger does not verify"
        return st
    if run_audit:
        _audit(ledger, st)
    else:
        st.audit_text = "the aggregation was not replayed (run `flower-chain ledger audit` or pass --audit)"
    return st


def _check_keys(ledger: Ledger, keys: str | Path, st: Status) -> None:
    want, have = Keyring.from_path(keys).keys, read_genesis(ledger).client_keys
    lacks, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if lacks or extra:
        raise VerificationError(
            "the genesis keyring differs from "
            + str(keys)
            + ": "
            + "; ".join(
                ([f"lacks {', '.join(lacks)}"] if lacks else [])
                + ([f"also allows {', '.join(extra)}"] if extra else [])
            )
        )
    st.checked.append(f"the genesis allows exactly the {len(want)} keys of {keys}")


def _check_witnesses(
    ledger: Ledger, witnesses: Sequence[str], quorum: int, server_key: bytes | None, st: Status
) -> None:
    from flower_chain.audit.witnessed import verify_witnessed

    w = verify_witnessed(ledger, list(witnesses), quorum=quorum, server_key=server_key)
    if not w.ok:
        raise VerificationError(f"witness cosignatures: {w.summary()}")
    st.checked.append(w.summary())
