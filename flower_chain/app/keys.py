"""Where the bundled demo app's nodes find their keys when no setting names one.

The plugin (:func:`flower_chain.clients.settings.key_path_for`) reads node
config, environment and the run config ``flower-chain-keys``; the bundled
demo also finds them under its own run config: ``keys-dir`` (its
``clients/``) or ``out-dir`` (``keys/clients``), where ``run.py`` and
``flower-chain keys init`` put them. :data:`demo_signing_mod` is the signing
mod with that fallback.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from flower_chain.clients.settings import key_path_for
from flower_chain.clients.signing import make_signing_mod


def demo_keys(context: Context) -> tuple[str, str] | None:
    """The demo's key directory from its run config (``keys-dir``, else ``out-dir``/keys), with its source."""
    for key, sub in (("keys-dir", "clients"), ("out-dir", "keys/clients")):
        if context.run_config.get(key):
            return str(Path(str(context.run_config[key])) / sub), f"run config {key!r}"
    return None


def demo_key_path(context: Context) -> Path:
    """This node's key: the plugin's settings first, then the demo's run config."""
    return key_path_for(context, demo_keys)


#: The bundled app's signing mod: :data:`~flower_chain.clients.signing.signing_mod` plus the demo's key directory.
demo_signing_mod = make_signing_mod(key_fallback=demo_keys)
