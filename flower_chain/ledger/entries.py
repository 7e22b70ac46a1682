"""Ledger entries (the leaves of the log) and the client update statement.

Every entry is ``ENTRY_DOMAIN || CE1(map)`` where the map has a ``"type"``
field naming one of the kinds below (docs/ledger-format.md §3). Entries are
frozen dataclasses; :func:`decode_entry` turns bytes back into one and
rejects unknown types, missing or extra fields and wrong field types.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self, TypeAlias, TypeVar, cast

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION, check_version
from flower_chain.ledger.encoding import decode_with_domain, encode, encode_with_domain
from flower_chain.ledger.errors import EncodingError

ENTRY_DOMAIN = b"flower-chain:entry:v1\x00"
STATEMENT_DOMAIN = b"flower-chain:update:v1\x00"

#: Most entries block 0 may hold (the genesis and its ``keys`` entries): over 4 million keys. A reader
#: refuses a block 0 claiming more before it reads any of them (:mod:`flower_chain.ledger.genesis`).
MAX_BLOCK0_ENTRIES = 4096

ACCEPTED = "accepted"
REJECTED = "rejected"

#: Reason codes of rejected updates (docs/ledger-format.md §3.2).
REASONS = (
    "unsigned",
    "bad-signature",
    "unknown-key",
    "revoked-key",
    "wrong-federation",
    "wrong-round",
    "stale-parent",
    "wrong-base-model",
    "digest-mismatch",
    "num-examples-mismatch",
    "duplicate",
    "malformed",
    "client-error",
    "equivocation",
    "wrong-settings",
)


def metrics_digest(metrics: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical encoding of a metrics map (int and float values)."""
    return hashlib.sha256(encode(dict(metrics))).digest()


_TYPES: dict[str, type[_Entry]] = {}
_E = TypeVar("_E", bound="_Entry")


def _register(cls: type[_E]) -> type[_E]:
    _TYPES[cls.TYPE] = cls
    return cls


_PYTYPES: dict[str, type] = {"int": int, "str": str, "bytes": bytes, "dict": dict, "list": list, "float": float}


class _Entry:
    TYPE: ClassVar[str]
    #: Fields left out of the encoding when they hold this value (and read as it when absent), so
    #: entries written before the field existed keep their bytes; a present field never holds it.
    IMPLIED: ClassVar[dict[str, Any]] = {}

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_NAMES")
        if names is None:  # once per class (dataclasses.fields builds its tuple on every call)
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            cls._NAMES = names  # type: ignore[attr-defined]
        return names

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self._field_names()}
        for name, value in self.IMPLIED.items():
            if d[name] == value and type(d[name]) is type(value):
                del d[name]
        d["type"] = self.TYPE
        return d

    def to_bytes(self) -> bytes:
        return encode_with_domain(ENTRY_DOMAIN, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for name, value in cls.IMPLIED.items():
            if name not in d:
                d = {**d, name: value}
            elif d[name] == value:
                raise EncodingError(
                    f"{cls.TYPE} entry: field {name!r} is {value!r}, which is written by leaving it out"
                )
        extra = set(d) - set(names) - {"type"}
        missing = set(names) - set(d)
        if extra or missing:
            raise EncodingError(f"{cls.TYPE} entry: unexpected fields {sorted(extra)} / missing {sorted(missing)}")
        for name, f in names.items():
            annotation = f.type if isinstance(f.type, str) else f.type.__name__
            want = _PYTYPES[annotation.split("[", 1)[0]]  # "dict[str, Any]" is a dict
            v = d[name]
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise EncodingError(f"{cls.TYPE} entry: field {name!r} must be {want.__name__}")
        return cls(**{k: d[k] for k in names})


@_register
@dataclass(frozen=True)
class GenesisEntry(_Entry):
    """The first entry of a ledger: who may take part, who signs, and how arrays are digested.

    ``digest_version`` is the array digest version (:func:`flower_chain.ledger.arrays.array_digest`)
    of every digest in the ledger: 2 for new ledgers; a genesis without the field (written before
    v2 existed) means 1. Decoding refuses a version this code does not know.
    """

    TYPE: ClassVar[str] = "genesis"
    IMPLIED: ClassVar[dict[str, Any]] = {"digest_version": 1, "keys_entries": 0}
    federation_id: str
    origin: str
    server_key: bytes
    client_keys: dict[str, bytes]  # key id -> raw 32-byte Ed25519 public key
    strategy: str
    config_digest: bytes
    created_ms: int
    digest_version: int = ARRAY_DIGEST_VERSION
    #: How many ``keys`` entries continue the keyring right after this entry, in block 0 (0: none, and the
    #: field is left out): readers without block boundaries (tiles, proofs) take exactly these.
    keys_entries: int = 0

    def __post_init__(self) -> None:
        check_version(self.digest_version)
        if not 0 <= self.keys_entries < MAX_BLOCK0_ENTRIES:
            raise EncodingError(
                f"genesis entry: keys_entries {self.keys_entries} is outside 0..{MAX_BLOCK0_ENTRIES - 1}"
            )


@_register
@dataclass(frozen=True)
class UpdateEntry(_Entry):
    """One client reply (to a train or evaluate instruction) received in a round, with the server's verdict.

    ``statement`` and ``signature`` are the client's signed update statement
    as received (empty when unsigned), so anyone holding the genesis keyring
    can re-check every accepted update.
    """

    TYPE: ClassVar[str] = "update"
    kind: str  # "train" or "evaluate": the instruction the reply answers
    round: int
    node_id: str  # Flower node ids are unsigned 64-bit: recorded in decimal
    key_id: str
    verdict: str
    reason: str
    detail: str
    num_examples: int
    arrays_digest: bytes
    metrics: dict[str, Any]
    statement: bytes
    signature: bytes


@_register
@dataclass(frozen=True)
class EvaluationEntry(_Entry):
    """Aggregated evaluation of a round: ``source`` is ``federated`` or ``centralized``."""

    TYPE: ClassVar[str] = "evaluation"
    round: int
    source: str
    num_replies: int
    metrics: dict[str, Any]


@_register
@dataclass(frozen=True)
class RevocationEntry(_Entry):
    """A client key is revoked: updates signed by it after this entry are rejected."""

    TYPE: ClassVar[str] = "revocation"
    key_id: str
    reason: str
    created_ms: int


@_register
@dataclass(frozen=True)
class CosignatureEntry(_Entry):
    """A client's C2SP cosignature/v1 of the checkpoint it was sent with the round's instruction.

    ``size`` is that checkpoint's log size: the log after the block before this one. Clients
    that verified consistency vouch for the log they saw (clients as witnesses); anyone with
    the genesis keyring can check the line (docs/ledger-format.md §3).
    """

    TYPE: ClassVar[str] = "cosignature"
    key_id: str
    round: int
    size: int
    line: str


@_register
@dataclass(frozen=True)
class KeysEntry(_Entry):
    """More of the genesis keyring: block 0 continues a keyring too large for one entry in ``keys`` entries.

    Each follows the genesis entry in block 0 (and only there), so that every entry of block 0 fits the
    ``uint16`` length of a tlog-tiles entry bundle; :mod:`flower_chain.ledger.genesis` splits and joins them.
    """

    TYPE: ClassVar[str] = "keys"
    client_keys: dict[str, bytes]  # key id -> raw 32-byte Ed25519 public key, as the genesis' own


@_register
@dataclass(frozen=True)
class SecAggEntry(_Entry):
    """One record of a SecAgg+ round.

    Server records (``header``, ``commit``, ``result``) keep their content in ``data`` and leave the node fields
    empty; node records (a stage in :data:`~flower_chain.ledger.secagg.CLIENT_STAGES`) keep the node's signed
    :class:`~flower_chain.ledger.secagg.StageStatement` in ``statement``/``signature`` and the server's verdict.
    The rest of the SecAgg+ transcript's format lives in :mod:`flower_chain.ledger.secagg`.
    """

    TYPE: ClassVar[str] = "secagg"
    round: int
    stage: str
    node_id: str
    key_id: str
    verdict: str
    reason: str
    detail: str
    statement: bytes
    signature: bytes
    data: dict[str, Any]


#: Every entry type.
Entry: TypeAlias = (
    GenesisEntry | UpdateEntry | EvaluationEntry | RevocationEntry | CosignatureEntry | KeysEntry | SecAggEntry
)


def decode_entry(data: bytes) -> Entry:
    """Decode entry bytes; raise :class:`EncodingError` if they are not a valid entry."""
    d = decode_with_domain(ENTRY_DOMAIN, data)
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise EncodingError("entry is not a map with a text 'type'")
    cls = _TYPES.get(d["type"])
    if cls is None:
        raise EncodingError(f"unknown entry type {d['type']!r}")
    return cast(Entry, cls.from_dict(d))  # _TYPES holds exactly the registered entry types


#: Fields of a v2 update statement (docs/ledger-format.md §7): all present, or (v1) all absent.
STATEMENT_V2_FIELDS = ("seen_size", "pending_round", "settings_digest")
#: Bounds of the v2 fields: a log size and a round, both -1 for "none".
MAX_SEEN_SIZE = 2**62
MAX_PENDING_ROUND = 2**31


@dataclass(frozen=True)
class UpdateStatement:
    """What a client signs about one reply (docs/ledger-format.md §7).

    Attributes
    ----------
    kind : str
        ``train`` or ``evaluate``.
    federation_id : str
        Federation the update is for (stops cross-run replay).
    round : int
        Server round (stops replay across rounds).
    key_id : str
        Key id of the signing key.
    parent : bytes
        Ledger head hash the server announced when it configured the round (a client that verified the
        head block it was sent signs only when this is that block's hash).
    base_digest : bytes
        Array digest of the global model the client received.
    arrays_digest : bytes
        Array digest of the arrays the client returns (empty for evaluate).
    num_examples : int
        Number of examples the client reports.
    metrics_digest : bytes
        :func:`metrics_digest` of the reply's metrics.
    seen_size : int or None
        v2: log size of the last checkpoint the client verified (-1: none).
    pending_round : int or None
        v2: the oldest round of the client's updates still without a receipt (-1: none).
    settings_digest : bytes or None
        v2: the genesis ``config_digest`` (32 bytes) the server announced: the settings the client consents to.

    A v1 statement (older clients, every ledger written before v2) has none of the three v2 fields:
    they are ``None`` here and absent from the encoding; a v2 statement has all three. A statement
    with only some of them, or one present as ``None``, does not decode.
    """

    kind: str
    federation_id: str
    round: int
    key_id: str
    parent: bytes
    base_digest: bytes
    arrays_digest: bytes
    num_examples: int
    metrics_digest: bytes = field(default=b"")
    seen_size: int | None = None
    pending_round: int | None = None
    settings_digest: bytes | None = None

    @property
    def version(self) -> int:
        """2 when the statement carries the v2 fields, else 1."""
        return 1 if self.settings_digest is None else 2

    def to_bytes(self) -> bytes:
        present = [getattr(self, n) is not None for n in STATEMENT_V2_FIELDS]
        if any(present) and not all(present):
            raise EncodingError("update statement: the v2 fields go together (all or none)")
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in STATEMENT_V2_FIELDS:
            if d[name] is None:
                del d[name]
        return encode_with_domain(STATEMENT_DOMAIN, d)

    @classmethod
    def from_bytes(cls, data: bytes) -> UpdateStatement:
        d = decode_with_domain(STATEMENT_DOMAIN, data)
        if not isinstance(d, dict) or (d.keys() != _STATEMENT_V1_NAMES and d.keys() != _STATEMENT_V2_NAMES):
            raise EncodingError("update statement has the wrong fields")
        st = cls(**d)
        for name, typ in (
            ("kind", str),
            ("federation_id", str),
            ("round", int),
            ("key_id", str),
            ("parent", bytes),
            ("base_digest", bytes),
            ("arrays_digest", bytes),
            ("num_examples", int),
            ("metrics_digest", bytes),
        ):
            if not isinstance(getattr(st, name), typ):
                raise EncodingError(f"update statement field {name!r} must be {typ.__name__}")
        if "settings_digest" in d:
            _check_v2(st)
        return st


#: the field names of a v1 and of a v2 statement (``from_bytes`` accepts exactly one of the two sets)
_STATEMENT_V2_NAMES = frozenset(f.name for f in fields(UpdateStatement))
_STATEMENT_V1_NAMES = _STATEMENT_V2_NAMES - frozenset(STATEMENT_V2_FIELDS)


def _check_v2(st: UpdateStatement) -> None:
    """The v2 fields of a decoded statement: typed, bounded, never present as ``None``."""
    for name, top in (("seen_size", MAX_SEEN_SIZE), ("pending_round", MAX_PENDING_ROUND)):
        v = getattr(st, name)
        if type(v) is not int or not -1 <= v <= top:
            raise EncodingError(f"update statement field {name!r} must be an integer in [-1, {top}]")
    if type(st.settings_digest) is not bytes or len(st.settings_digest) != 32:
        raise EncodingError("update statement field 'settings_digest' must be 32 bytes")
