"""The SecAgg+ transcript on the ledger: round header, signed stage records, commitment, result.

Specified in docs/secagg.md. Pure (neither flwr nor torch). Every decoder here is total: it returns a
value or raises :class:`~flower_chain.ledger.errors.EncodingError`, nothing else.

A SecAgg+ round writes two blocks: the *commit* block (the round header, the signed stage 0-2 records
of every node, the live/dropped commitment) before the unmask stage, then the *result* block (the
signed stage 3 records and the result, with the new ``model_after``). All are :class:`SecAggEntry`
leaves (entry type ``secagg``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION
from flower_chain.ledger.encoding import decode_with_domain, encode_with_domain
from flower_chain.ledger.entries import SecAggEntry as SecAggEntry  # the entry type lives with the others; re-exported
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.secagg_masks import GENERATORS
from flower_chain.ledger.text import is_decimal

STAGE_DOMAIN = b"flower-chain:secagg-stage:v1\x00"
REQUEST_DOMAIN = b"flower-chain:secagg-request:v1\x00"
HEADER_DOMAIN = b"flower-chain:secagg-header:v1\x00"
SHARE_DOMAIN = b"flower-chain:secagg-share:v1\x00"

HEADER, COMMIT, RESULT = "header", "commit", "result"
SETUP, SHARE_KEYS, MASKED, UNMASK = "setup", "share-keys", "masked-input", "unmask"
CLIENT_STAGES = (SETUP, SHARE_KEYS, MASKED, UNMASK)
SERVER_RECORDS = (HEADER, COMMIT, RESULT)
#: Reasons a stage reply is rejected (the node then counts as dropped from that stage on).
REASONS = (
    "no-reply",
    "client-error",
    "unsigned",
    "bad-signature",
    "unknown-key",
    "revoked-key",
    "replayed",
    "duplicate",
    "malformed",
    "mismatch",
    "refused",
)


def node_id_text(value: Any) -> str:
    """A Flower node id as ledger text (decimal); raise :class:`EncodingError` for anything but a uint64."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise EncodingError(f"not a node id: {str(value)[:40]!r}")
    return str(value)


def request_digest(stage: str, content: dict[str, Any]) -> bytes:
    """SHA-256 of what the server asked a node at ``stage`` (docs/secagg.md §3).

    At the masked-input stage the forwarded ciphertexts enter by their SHA-256 (what each owner signed in
    ``sent``), so the digest, commitments included, is recomputable from the share-keys statements on the
    ledger: a node's signature binds the commitments it checked its shares against.
    """
    if stage == MASKED and isinstance(content, dict) and isinstance(content.get("ciphertexts"), dict):
        cts = content["ciphertexts"]
        digests = {k: hashlib.sha256(v).digest() if isinstance(v, bytes) else v for k, v in cts.items()}
        rest = {k: v for k, v in content.items() if k != "ciphertexts"}
        content = {**rest, "ciphertext_digests": digests}
    return hashlib.sha256(encode_with_domain(REQUEST_DOMAIN, {"stage": stage, "content": content})).digest()


def masked_request_digest(ciphertext_digests: dict[str, bytes], shares: dict[str, Any]) -> bytes:
    """:func:`request_digest` of a masked-input request from what the ledger holds: each source's signed
    ciphertext digest (``sent``) and share commitments (``shares``) for this holder."""
    content = {"shares": shares, "ciphertext_digests": ciphertext_digests}
    return hashlib.sha256(encode_with_domain(REQUEST_DOMAIN, {"stage": MASKED, "content": content})).digest()


def seed_digest(seed: bytes) -> bytes:
    """What a node commits to its private mask seed in its masked-input statement (the seed stays secret)."""
    return hashlib.sha256(b"flower-chain:secagg-seed:v1\x00" + bytes(seed)).digest()


def share_digest(share: bytes) -> bytes:
    """What a node commits, at share-keys, to each Shamir share it creates (docs/secagg.md §3): a share
    revealed at unmask is checked against it, so a wrong share is named and left out, one pass, no search."""
    return hashlib.sha256(SHARE_DOMAIN + bytes(share)).digest()


def overflow_problem(params: dict[str, Any], nodes: int) -> str | None:
    """Why the masked sum of ``nodes`` inputs could wrap modulo ``mod_range``, or ``None``.

    Each quantized element of an input (its weight included, when ``num_examples <= max_weight``) is at
    most ``quantization_range``, so the sum of ``nodes`` inputs stays below ``mod_range`` exactly when
    ``nodes * quantization_range < mod_range``; else the unmasked aggregate is silently wrong.
    """
    q, mod = params["quantization_range"], params["mod_range"]
    if nodes * q >= mod:
        return (
            f"{nodes} inputs of quantization_range {q} can sum to {nodes * q}, not below mod_range {mod}: "
            "the masked sum could wrap"
        )
    return None


def header_digest(header: dict[str, Any]) -> bytes:
    """The round id: SHA-256 of the round header (every stage statement names it)."""
    return hashlib.sha256(encode_with_domain(HEADER_DOMAIN, header)).digest()


@dataclass(frozen=True)
class StageStatement:
    """What a node signs about one stage reply (docs/secagg.md §3).

    ``request`` is :func:`request_digest` of the instruction answered; ``reply`` the stage's
    content (:func:`check_reply` gives its shape).
    """

    federation_id: str
    round: int
    round_id: bytes
    stage: str
    node_id: str
    key_id: str
    request: bytes
    reply: dict[str, Any]

    _FIELDS: ClassVar[tuple[tuple[str, type], ...]] = (
        ("federation_id", str),
        ("round", int),
        ("round_id", bytes),
        ("stage", str),
        ("node_id", str),
        ("key_id", str),
        ("request", bytes),
        ("reply", dict),
    )

    def to_bytes(self) -> bytes:
        return encode_with_domain(STAGE_DOMAIN, {n: getattr(self, n) for n, _ in self._FIELDS})

    @classmethod
    def from_bytes(cls, data: Any) -> StageStatement:
        if not isinstance(data, (bytes, bytearray)):
            raise EncodingError("a stage statement must be bytes")
        d = decode_with_domain(STAGE_DOMAIN, bytes(data))
        if not isinstance(d, dict) or sorted(d) != sorted(n for n, _ in cls._FIELDS):
            raise EncodingError("stage statement has the wrong fields")
        for name, typ in cls._FIELDS:
            if not isinstance(d[name], typ) or isinstance(d[name], bool):
                raise EncodingError(f"stage statement field {name!r} must be {typ.__name__}")
        if d["stage"] not in CLIENT_STAGES:
            raise EncodingError(f"unknown stage {d['stage']!r}")
        if not is_decimal(d["node_id"]) or len(d["node_id"]) > 20:
            raise EncodingError("a stage statement's node_id must be a decimal node id")
        check_reply(d["stage"], d["reply"])
        return cls(**d)


def _ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and is_decimal(v) and len(v) <= 20 for v in value):
        raise EncodingError(f"{what} must be a list of node ids")
    if len(set(value)) != len(value):
        raise EncodingError(f"{what} names a node twice")
    return value


def _id_map(value: Any, what: str, typ: type) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and is_decimal(k) and len(k) <= 20 and isinstance(v, typ) for k, v in value.items()
    ):
        raise EncodingError(f"{what} must map node ids to {typ.__name__}")
    return value


_REPLY_FIELDS: dict[str, dict[str, type]] = {
    SETUP: {"pk1": bytes, "pk2": bytes},
    SHARE_KEYS: {"sent": dict, "shares": dict},
    MASKED: {"digest": bytes, "weight": int, "sources": list, "seed_digest": bytes, "base_digest": bytes},
    UNMASK: {
        "active": list,
        "dead": list,
        "checkpoint_size": int,
        "checkpoint_root": bytes,
        "seed_shares": dict,
        "key_shares": dict,
        "refused": str,
    },
}


def check_reply(stage: str, reply: Any) -> dict[str, Any]:
    """Check the shape of a stage statement's ``reply``; raise :class:`EncodingError` if wrong."""
    want = _REPLY_FIELDS.get(stage)
    if want is None or not isinstance(reply, dict) or sorted(reply) != sorted(want):
        raise EncodingError(f"a {stage} reply must have exactly the fields {sorted(want or {})}")
    for name, typ in want.items():
        if not isinstance(reply[name], typ) or isinstance(reply[name], bool):
            raise EncodingError(f"{stage} reply field {name!r} must be {typ.__name__}")
    if stage == SHARE_KEYS:
        _id_map(reply["sent"], "sent", bytes)
        shares = _id_map(reply["shares"], "shares", list)
        if not all(len(v) == 2 and all(isinstance(d, bytes) and len(d) == 32 for d in v) for v in shares.values()):
            raise EncodingError("shares must map node ids to [seed share digest, key share digest]")
    elif stage == MASKED:
        _ids(reply["sources"], "sources")
    elif stage == UNMASK:
        _ids(reply["active"], "active")
        _ids(reply["dead"], "dead")
        _id_map(reply["seed_shares"], "seed_shares", bytes)
        _id_map(reply["key_shares"], "key_shares", bytes)
    return reply


_PARAMS: dict[str, type] = {
    "num_shares": int,
    "threshold": int,
    "clipping_range": float,
    "quantization_range": int,
    "mod_range": int,
    "max_weight": float,
}
_HEADER: dict[str, type] = {
    "federation_id": str,
    "round": int,
    "parent": bytes,
    "base_digest": bytes,
    "params": dict,
    "sampled": list,
    "graph_seed": bytes,
    "generator": str,
    "nonce": bytes,
}
VERSION_FIELD = "digest_version"  # the ledger's array digest version (docs/secagg.md §2.1); absent = 2


def header_digest_version(header: dict[str, Any]) -> int:
    """The array digest version a checked round header names (absent: 2, what headers before it used)."""
    return cast(int, header.get(VERSION_FIELD, ARRAY_DIGEST_VERSION))


def check_header(data: Any) -> dict[str, Any]:
    """Check a round header's shape (docs/secagg.md §2.1); raise :class:`EncodingError` if wrong.

    ``digest_version`` is an integer when present (whether it is a known version is the reader's check)."""
    want = dict(_HEADER, **({VERSION_FIELD: int} if isinstance(data, dict) and VERSION_FIELD in data else {}))
    if not isinstance(data, dict) or sorted(data) != sorted(want):
        raise EncodingError(f"a round header must have exactly the fields {sorted(_HEADER)} (and {VERSION_FIELD})")
    for name, typ in want.items():
        if not isinstance(data[name], typ) or isinstance(data[name], bool):
            raise EncodingError(f"round header field {name!r} must be {typ.__name__}")
    p = data["params"]
    if sorted(p) != sorted(_PARAMS) or not all(
        isinstance(p[k], t) and not isinstance(p[k], bool) for k, t in _PARAMS.items()
    ):
        raise EncodingError(f"round header params must be exactly {sorted(_PARAMS)}")
    if data["generator"] not in GENERATORS:
        raise EncodingError(f"unknown mask generator {data['generator']!r}")
    _ids(data["sampled"], "sampled")
    return data


_COMMIT: dict[str, type] = {"round_id": bytes, "live": list, "dropped": list, "masked": dict, "statements": dict}
_RESULT: dict[str, type] = {
    "round_id": bytes,
    "live": list,
    "aggregate_digest": bytes,
    "names": list,
    "dtypes": list,
    "model_after": bytes,
    "failure": str,
}


def check_commit(data: Any) -> dict[str, Any]:
    """Check a live/dropped commitment's shape (docs/secagg.md §2.3); raise :class:`EncodingError`."""
    _fields(data, _COMMIT, "commitment")
    live, dropped = _ids(data["live"], "live"), _ids(data["dropped"], "dropped")
    _id_map(data["masked"], "masked", bytes)
    if set(live) & set(dropped):
        raise EncodingError("the commitment names a node both live and dropped")
    if sorted(data["masked"]) != sorted(live):
        raise EncodingError("the commitment's masked inputs are not exactly its live nodes")
    st = _id_map(data["statements"], "statements", list)
    if sorted(st) != sorted(live) or not all(len(v) == 2 and all(isinstance(b, bytes) for b in v) for v in st.values()):
        raise EncodingError("the commitment's statements must map each live node to [statement, signature]")
    return cast(dict[str, Any], data)  # its shape was checked above


def check_result(data: Any) -> dict[str, Any]:
    """Check a round result's shape (docs/secagg.md §2.4); raise :class:`EncodingError` if wrong."""
    _fields(data, _RESULT, "result")
    _ids(data["live"], "live")
    if not all(isinstance(x, str) for x in data["names"] + data["dtypes"]) or len(data["names"]) != len(data["dtypes"]):
        raise EncodingError("result names and dtypes must be lists of text of one length")
    return cast(dict[str, Any], data)  # its shape was checked above


def _fields(data: Any, want: dict[str, type], what: str) -> None:
    if not isinstance(data, dict) or sorted(data) != sorted(want):
        raise EncodingError(f"a {what} must have exactly the fields {sorted(want)}")
    for name, typ in want.items():
        if not isinstance(data[name], typ) or isinstance(data[name], bool):
            raise EncodingError(f"{what} field {name!r} must be {typ.__name__}")


def server_record(server_round: int, stage: str, data: dict[str, Any]) -> SecAggEntry:
    """A server record (``header``, ``commit`` or ``result``) as an entry."""
    return SecAggEntry(
        round=int(server_round),
        stage=stage,
        node_id="",
        key_id="",
        verdict="",
        reason="",
        detail="",
        statement=b"",
        signature=b"",
        data=data,
    )
