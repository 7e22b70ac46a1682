"""A node's flower-chain settings: node config first, then the environment (no torch).

Every setting the signing mod reads from a node is read here:

=====================  ==================================  ===============================================
node config            environment                         meaning
=====================  ==================================  ===============================================
``signing-key``        ``FLOWER_CHAIN_SIGNING_KEY``        the key file, or a directory of
                                                           ``client-<partition-id>.key`` files
``receipts-dir``       ``FLOWER_CHAIN_RECEIPTS``           where receipts are kept (per key id)
``server-key``         ``FLOWER_CHAIN_SERVER_KEY``         the server key to pin (default: first use)
``witness-keys``       ``FLOWER_CHAIN_WITNESS_KEYS``       trusted witnesses (comma-separated)
``witness-quorum``     ``FLOWER_CHAIN_WITNESS_QUORUM``     cosignatures each checkpoint needs (default 1)
``anchor``             ``FLOWER_CHAIN_ANCHOR``             ``evm+http://HOST:PORT`` to compare heads with
``anchor-contract``    ``FLOWER_CHAIN_ANCHOR_CONTRACT``    the ``LedgerAnchor`` contract address
``anchor-owner``       ``FLOWER_CHAIN_ANCHOR_OWNER``       the account that must own it
``settings-digest``    ``FLOWER_CHAIN_SETTINGS_DIGEST``    the strategy settings digest this node consents
                                                           to (64 hex digits, the genesis ``config_digest``):
                                                           it signs nothing for a server announcing another
                                                           or none
=====================  ==================================  ===============================================

and, for simulations and demos only (every node of the run reads it), the run
config ``flower-chain-keys``: the ``keys init`` directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context

from flower_chain.anchor.reader import AnchorReader
from flower_chain.ledger.cosignature import CosignerKey, parse_cosigner_key
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import load_public, raw_public

ENV_KEY = "FLOWER_CHAIN_SIGNING_KEY"
NODE_CONFIG_KEY = "signing-key"
RUN_CONFIG_KEYS = "flower-chain-keys"  # simulation/demo only: the `keys init` directory, for every node of the run
ENV_RECEIPTS = "FLOWER_CHAIN_RECEIPTS"
RECEIPTS_NODE_CONFIG = "receipts-dir"
ENV_SERVER_KEY = "FLOWER_CHAIN_SERVER_KEY"
SERVER_KEY_NODE_CONFIG = "server-key"
ENV_WITNESS_KEYS = "FLOWER_CHAIN_WITNESS_KEYS"
WITNESS_KEYS_NODE_CONFIG = "witness-keys"
ENV_WITNESS_QUORUM = "FLOWER_CHAIN_WITNESS_QUORUM"
WITNESS_QUORUM_NODE_CONFIG = "witness-quorum"
ENV_ANCHOR = "FLOWER_CHAIN_ANCHOR"
ANCHOR_NODE_CONFIG = "anchor"
ENV_ANCHOR_CONTRACT = "FLOWER_CHAIN_ANCHOR_CONTRACT"
ANCHOR_CONTRACT_NODE_CONFIG = "anchor-contract"
ENV_ANCHOR_OWNER = "FLOWER_CHAIN_ANCHOR_OWNER"
ANCHOR_OWNER_NODE_CONFIG = "anchor-owner"
ENV_SETTINGS_DIGEST = "FLOWER_CHAIN_SETTINGS_DIGEST"
SETTINGS_DIGEST_NODE_CONFIG = "settings-digest"

#: Where an application keeps its keys when no setting names one: ``(directory, source)`` or ``None``.
KeyFallback = Callable[[Context], "tuple[str, str] | None"]


def key_path_for(context: Context, fallback: KeyFallback | None = None) -> Path:
    """Where this node's private key is.

    In order: node config ``signing-key`` (a real node pins its own key), environment
    ``FLOWER_CHAIN_SIGNING_KEY``, run config ``flower-chain-keys`` (simulation and demos only — every
    node of the run reads the same setting) and ``fallback(context)`` (an application's own default,
    such as the bundled demo's ``keys-dir``). A directory means ``client-<partition-id>.key`` in it or
    in its ``clients/`` (so the ``keys init`` directory and its ``clients/`` both work, everywhere).

    Raises
    ------
    KeyFileError
        No setting names a key, a relative path does not exist, or a directory without a partition id.
    """
    value = context.node_config.get(NODE_CONFIG_KEY) or os.environ.get(ENV_KEY)
    source = f"node config {NODE_CONFIG_KEY!r}" if context.node_config.get(NODE_CONFIG_KEY) else f"${ENV_KEY}"
    if not value and context.run_config.get(RUN_CONFIG_KEYS):
        value, source = str(Path(str(context.run_config[RUN_CONFIG_KEYS]))), f"run config {RUN_CONFIG_KEYS!r}"
    if not value and fallback is not None:
        value, source = fallback(context) or (None, source)
    if not value:
        raise KeyFileError(
            f"no signing key: set node config '{NODE_CONFIG_KEY}' (flower-supernode --node-config "
            f"\"{NODE_CONFIG_KEY}='PATH'\"), the environment variable {ENV_KEY}, or (simulation) the run config "
            f"'{RUN_CONFIG_KEYS}' to a key file or a directory of client-<partition-id>.key files (create them "
            "with `flower-chain keys init DIR --clients N`)"
        )
    p = Path(str(value))
    if not p.is_absolute() and not p.exists():
        raise KeyFileError(
            f"{source} names the relative path {str(p)!r}, which does not exist in this ClientApp's "
            f"working directory {os.getcwd()} (under `flwr run`, the local SuperLink's): use an "
            "absolute path"
        )
    if p.is_dir():
        if "partition-id" not in context.node_config:
            raise KeyFileError(f"{p} is a directory of keys but this node has no partition-id in its node config")
        name = f"client-{int(context.node_config['partition-id'])}.key"
        if not (p / name).exists() and (p / "clients").is_dir():
            p = p / "clients"  # the `keys init` directory itself: its clients/ holds the private keys
        p = p / name
    return p


def receipts_dir(context: Context, key_file: Path | None, kid: str) -> Path | None:
    """Where one key's receipts are kept: node config / environment, else ``receipts/<key id>`` beside the key."""
    value = context.node_config.get(RECEIPTS_NODE_CONFIG) or os.environ.get(ENV_RECEIPTS)
    if value:
        return Path(str(value)) / kid
    return key_file.parent / "receipts" / kid if key_file is not None else None


def pinned_server_key(context: Context) -> bytes | None:
    """The server key this node is configured to pin (raw Ed25519), or ``None`` (trust on first use)."""
    value = context.node_config.get(SERVER_KEY_NODE_CONFIG) or os.environ.get(ENV_SERVER_KEY)
    return raw_public(load_public(str(value))) if value else None


def setting(context: Context, node_key: str, env: str, given: Any = None) -> Any:
    """``given``, else the node config ``node_key`` (unless empty), else the environment ``env``, else ``None``."""
    if given is not None:
        return given
    value = context.node_config.get(node_key)
    return value if value not in (None, "") else (os.environ.get(env) or None)


def witness_settings(
    context: Context, keys: str | Iterable[str | CosignerKey] | None = None, quorum: int | str | None = None
) -> tuple[list[CosignerKey], int]:
    """Trusted witness keys and quorum: the arguments, else node config, else environment.

    Raises
    ------
    KeyFileError
        A key does not parse, or the quorum is not an integer between 1 and the number of keys.
    """
    raw = setting(context, WITNESS_KEYS_NODE_CONFIG, ENV_WITNESS_KEYS, keys)
    if raw is None:
        return [], 0
    items = [k.strip() for k in raw.split(",")] if isinstance(raw, str) else list(raw)
    parsed = [k if isinstance(k, CosignerKey) else parse_cosigner_key(k) for k in items if k]
    q = setting(context, WITNESS_QUORUM_NODE_CONFIG, ENV_WITNESS_QUORUM, quorum)
    try:
        q = 1 if q is None else int(q)
    except (TypeError, ValueError):
        raise KeyFileError(f"witness-quorum {q!r} is not an integer") from None
    if parsed and not 1 <= q <= len(parsed):
        raise KeyFileError(f"witness-quorum {q} must be between 1 and the {len(parsed)} witness key(s) given")
    return parsed, q if parsed else 0


def anchor_settings(
    context: Context, url: str | None = None, contract: str | None = None, owner: str | None = None
) -> AnchorReader | None:
    """The anchor to check checkpoints against (arguments, node config, environment), or ``None``."""
    url = setting(context, ANCHOR_NODE_CONFIG, ENV_ANCHOR, url)
    if not url:
        return None
    return AnchorReader(
        str(url),
        str(setting(context, ANCHOR_CONTRACT_NODE_CONFIG, ENV_ANCHOR_CONTRACT, contract) or ""),
        setting(context, ANCHOR_OWNER_NODE_CONFIG, ENV_ANCHOR_OWNER, owner),
    )


def settings_pin(context: Context, given: str | bytes | None = None) -> bytes | None:
    """The settings digest this node pins (the genesis ``config_digest`` it consents to), or ``None``.

    ``given`` (raw 32 bytes or 64 hex digits), else node config ``settings-digest``, else
    ``FLOWER_CHAIN_SETTINGS_DIGEST``.

    Raises
    ------
    KeyFileError
        The value is not 32 bytes / 64 hex digits.
    """
    value = setting(context, SETTINGS_DIGEST_NODE_CONFIG, ENV_SETTINGS_DIGEST, given)
    if value is None:
        return None
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        digest = bytes.fromhex(text.strip())
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise KeyFileError(
            f"{SETTINGS_DIGEST_NODE_CONFIG} / {ENV_SETTINGS_DIGEST} must be 64 hex digits (the genesis' "
            f"config_digest), not {text[:80]!r}"
        )
    return digest
