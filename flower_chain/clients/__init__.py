"""Client side: sign (``signing_mod``, no torch needed) and train (the bundled torch clients)."""

from flower_chain.clients.signing import make_signing_mod, signing_mod

__all__ = ["make_signing_mod", "signing_mod"]
