"""Read-only access to a federation's on-chain anchors, for clients (needs web3 only when used).

A client compares the head block the server sends with the anchor the
server's operator published for its height (:class:`AnchorReader`). A node
that cannot be read is :class:`AnchorUnavailable` (nothing is known against
the server); a foreign contract or another owner is an
:class:`~flower_chain.anchor.evm.AnchorError` (the anchor cannot be trusted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flower_chain.ledger.errors import LedgerError

if TYPE_CHECKING:
    from flower_chain.anchor.evm import ChainAnchor, EvmAnchor


class AnchorUnavailable(LedgerError):
    """The chain node cannot be read right now (not evidence against the server)."""


class AnchorReader:
    """Read-only access to the ``LedgerAnchor`` contract that anchors a federation's blocks (needs web3).

    Parameters
    ----------
    url : str
        ``evm+http://HOST:PORT`` (or ``evm+https://``; ``evm+tester:`` in tests).
    contract : str
        Address of the deployed ``LedgerAnchor`` contract.
    owner : str, optional
        The account that must own the contract (the server operator's anchoring account).
    timeout : float
        Seconds per RPC request.

    Raises
    ------
    AnchorError
        web3 is not installed (``pip install 'flower-chain[evm]'``), or the URL or contract is missing.
    """

    def __init__(self, url: str, contract: str, owner: str | None = None, *, timeout: float = 10.0) -> None:
        from flower_chain.anchor.evm import AnchorError

        try:
            import web3  # noqa: F401 - only to fail early with a clear message
        except ImportError as e:
            raise AnchorError(
                "the client's anchor check needs web3: pip install 'flower-chain[evm]' "
                "(or remove the node config 'anchor')"
            ) from e
        if not str(url).startswith(("evm+http://", "evm+https://", "evm+tester:")):
            raise AnchorError(f"anchor {url!r}: anchor URLs look like evm+http://HOST:PORT")
        if not contract:
            raise AnchorError("the anchor check needs the contract address (node config 'anchor-contract')")
        self.url, self.contract, self.owner, self.timeout = str(url), str(contract), owner or None, float(timeout)
        self._anchors: dict[str, EvmAnchor] = {}

    def _anchor(self, federation_id: str) -> EvmAnchor:
        from flower_chain.anchor.evm import AnchorError, EvmAnchor

        got = self._anchors.get(federation_id)
        if got is None:
            try:
                got = EvmAnchor(self.url, federation_id=federation_id, contract=self.contract, timeout=self.timeout)
            except AnchorError as e:
                if str(e).startswith("cannot reach"):
                    raise AnchorUnavailable(str(e)) from e
                raise
            if self.owner is not None and str(got.owner).lower() != self.owner.lower():
                raise AnchorError(
                    f"the anchor contract {got.address} is owned by {got.owner}, not by the "
                    f"configured owner {self.owner}"
                )
            if len(self._anchors) < 16:
                self._anchors[federation_id] = got
        return got

    def get(self, federation_id: str, height: int) -> ChainAnchor | None:
        """The anchor of block ``height`` (``ChainAnchor``), or ``None`` when not published yet.

        Raises
        ------
        AnchorError
            A foreign contract, another federation's, or another owner's.
        AnchorUnavailable
            The node cannot be read.
        """
        anchor = self._anchor(federation_id)
        try:
            return anchor.get(int(height))
        except Exception as e:  # noqa: BLE001 - any transport failure: not readable now
            self._anchors.pop(federation_id, None)
            raise AnchorUnavailable(f"cannot read the anchor of height {height}: {type(e).__name__}") from e
