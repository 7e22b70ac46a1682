"""The settings of a ledger strategy, in one object (no torch, no flwr).

:class:`LedgerOptions` is what :class:`~flower_chain.strategies.LedgerStrategy`,
:class:`~flower_chain.strategies.LegacyLedgerStrategy` and
:class:`~flower_chain.strategies.core.LedgerCore` are configured with. The
strategies keep taking the same keyword arguments (``LedgerStrategy(FedAvg(),
ledger=..., keyring=..., server_key=...)``): they are the fields of this object::

    options = LedgerOptions(ledger="sqlite:////srv/ledger-{run_id}.db", keyring="keys/", server_key="server.key")
    strategy = LedgerStrategy(FedAvg(), options=options)
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import Keyring, load_private
from flower_chain.ledger.location import RUN_ID, with_run_id
from flower_chain.ledger.sealed import load_audit_public

_INLINE_KEY = re.compile(r"-----BEGIN.*|[0-9a-fA-F]{64}", re.DOTALL)  # audit key material given inline, not a path


def existing(path: str | Path, what: str) -> Path:
    """``path``, or a :class:`KeyFileError` naming the directory a relative path was resolved against."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        raise KeyFileError(
            f"{what} {str(p)!r} is a relative path that does not exist in the working directory "
            f"{os.getcwd()} (under `flwr run`, the local SuperLink's, not your app's): use an "
            "absolute path"
        )
    return p


def flower_run_id() -> str:
    """The running Flower app's run id (a ``{run_id}`` ledger URI), or a timestamp outside a run."""
    try:
        from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415

        return str(int(TaskIdentity.run_id))
    except Exception:  # noqa: BLE001 - outside a Flower run (tests, scripts)
        return time.strftime("%Y%m%d-%H%M%S")


@dataclass
class LedgerOptions:
    """Where a federation's ledger is, who may take part, what is kept and who else sees it.

    Parameters
    ----------
    ledger : Ledger or str
        A ledger backend or URI (``sqlite:///ledger.db``, ``jsonl:///ledger.jsonl``, ``postgresql://...``,
        ``memory:``). ``{run_id}`` in the URI becomes the Flower run id: one new ledger per ``flwr run``
        (:func:`flower_chain.ledger.location.with_run_id`).
    keyring : Keyring, Mapping[str, bytes], str or Path
        Allowed client public keys (a directory of ``*.pub`` files, a file, or key id -> raw key). Recorded
        in the genesis of a new ledger; an existing ledger keeps its genesis keyring.
    server_key : Ed25519PrivateKey, str or Path
        The server's signing key (or the path of its PEM file).
    federation_id : str, optional
        Id of a new federation (default: random); must match an existing ledger's.
    store_models : bool
        Keep every round's global model in the ledger's blob store (default True).
    store_client_updates : bool, optional
        Keep every accepted client update in the blob store, which ``flower-chain ledger audit`` replays
        the aggregation from. ``None`` (default) or ``True``: every round's accepted updates, whatever their
        size (sealed to ``audit_key`` when one is set); ``False``: none — `flower-chain ledger audit` then
        re-derives no round (NOT AUDITED).
    audit_key : X25519PublicKey, str, bytes or Path, optional
        The auditor's X25519 public key (the key, PEM, 64 hex digits, or a file of either; make one with
        `flower-chain ledger audit-key DIR`). Accepted updates are then stored sealed to it (HPKE,
        docs/sealed-updates.md), never in plaintext: the server cannot open them, `flower-chain ledger
        audit --audit-key PRIV` does. A bad key fails here, before anything is written.
    resume : bool
        Continue the federation of a ledger that already records rounds, from its last verified block
        (default False: such a ledger is refused). :class:`LedgerStrategy` only.
    min_accepted : int
        Fewest accepted train replies a round needs (default 1). A round below it is still recorded,
        then the run stops with :class:`~flower_chain.strategies.errors.TooFewAcceptedError`.
    anchor : AnchorPublisher or callable, optional
        Publishes each appended block to a chain off the round's critical path (``flower_chain.anchor``;
        a callable receives the federation id).
    verify_workers : int, optional
        Threads hashing and scanning the replies' arrays and verifying their signatures (default: CPUs,
        at most 8; 1 keeps all checks on the calling thread).
    witnesses : sequence of (url, verifier key), optional
        C2SP tlog-witnesses that cosign each block's checkpoint; clients are sent the cosigned one.
    witness_quorum : int
        Cosignatures each checkpoint should gather (a shortfall is recorded and reported).
    witness_timeout : float
        Seconds a block waits for its witnesses at most (a witness that is down never stalls a round).
    """

    ledger: Ledger | str
    keyring: Keyring | Mapping[str, bytes] | str | Path
    server_key: Ed25519PrivateKey | str | Path
    federation_id: str | None = None
    store_models: bool = True
    store_client_updates: bool | None = None
    audit_key: Any = None
    resume: bool = False
    min_accepted: int = 1
    anchor: Any = None
    verify_workers: int | None = None
    witnesses: Sequence[tuple[str, str]] | None = None
    witness_quorum: int = 0
    witness_timeout: float = 2.0

    def __post_init__(self) -> None:
        self.min_accepted = int(self.min_accepted)

    @classmethod
    def of(cls, options: LedgerOptions | None = None, **settings: Any) -> LedgerOptions:
        """``options`` with ``settings`` (keyword arguments named as the fields) applied over it.

        Raises
        ------
        TypeError
            A setting is not a field, or neither ``options`` nor the three required settings are given.
        """
        if options is None:
            return cls(**settings)
        if not isinstance(options, LedgerOptions):
            raise TypeError(f"options must be a LedgerOptions, not {type(options).__name__}")
        return dataclasses.replace(options, **settings) if settings else options

    def load_server_key(self) -> Ed25519PrivateKey:
        """The server's signing key (loaded from its file when given as a path)."""
        if isinstance(self.server_key, Ed25519PrivateKey):
            return self.server_key
        return load_private(existing(self.server_key, "server_key"))

    def load_audit_key(self) -> X25519PublicKey | None:
        """The auditor's X25519 public key (loaded from its file when given as a path), or ``None``.

        Raises
        ------
        KeyFileError
            A relative path that does not exist in the working directory.
        SealedError
            The key does not load (:func:`flower_chain.ledger.sealed.load_audit_public`).
        """
        source = self.audit_key
        if source is None:
            return None
        if isinstance(source, Path) or (isinstance(source, str) and not _INLINE_KEY.fullmatch(source.strip())):
            source = existing(source, "audit_key")
        return load_audit_public(source)

    def load_keys(self) -> dict[str, bytes]:
        """The allowed client keys, key id -> raw public key (read from the keyring path when given as one)."""
        keyring = self.keyring
        if isinstance(keyring, (str, Path)):
            keyring = Keyring.from_path(existing(keyring, "keyring"))
        return dict(keyring.keys if isinstance(keyring, Keyring) else keyring)

    def ledger_target(self) -> Ledger | str:
        """The ledger backend, or its URI with ``{run_id}`` replaced by the Flower run id."""
        if isinstance(self.ledger, str) and RUN_ID in self.ledger:  # one new ledger per `flwr run`, both strategies
            return with_run_id(self.ledger, flower_run_id())
        return self.ledger
