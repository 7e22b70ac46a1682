"""Client side: sign updates (``signing_mod``, no torch needed); the torch demo clients are in :mod:`flower_chain.app`."""

from flower_chain.clients.secagg import make_secagg_mod, secagg_mod
from flower_chain.clients.signing import make_signing_mod, signing_mod

__all__ = ["make_secagg_mod", "make_signing_mod", "secagg_mod", "signing_mod"]
