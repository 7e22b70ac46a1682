"""Anchor ledger checkpoints on an Ethereum-compatible chain (the ``flower-chain[evm]`` extra, web3.py).

URLs: ``evm+http://HOST:PORT`` (or ``evm+https://``) for a JSON-RPC node; ``evm+tester:`` for the
in-process eth-tester chain (tests). The contract is ``contracts/LedgerAnchor.sol``; its compiled
artifact ships with the package, so nothing is compiled or downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flower_chain.ledger.errors import LedgerError

if TYPE_CHECKING:
    from web3 import EthereumTesterProvider
    from web3.contract import Contract

MAGIC = bytes.fromhex("666c6331")  # "flc1"
KEY_ENV = "FLOWER_CHAIN_EVM_KEY"
FEE_MODES = ("auto", "eip1559", "legacy", "zero")


class AnchorError(LedgerError):
    """Anchoring cannot be done: unreachable node, wrong chain, foreign contract, no funds, ..."""


def artifact() -> dict[str, Any]:
    """ABI and bytecode of LedgerAnchor (checked in, built for the ``paris`` EVM)."""
    data: dict[str, Any] = json.loads(resources.files("flower_chain.anchor").joinpath("LedgerAnchor.json").read_text())
    return data


def read_private_key(key_file: str | Path | None = None) -> str:
    """The anchoring account's key from a file or ``FLOWER_CHAIN_EVM_KEY`` (never logged)."""
    if key_file:
        p = Path(key_file)
        if not p.is_file():
            raise AnchorError(f"anchor key file {p} not found")
        value = p.read_text().strip()
    else:
        value = os.environ.get(KEY_ENV, "").strip()
    if not value:
        raise AnchorError(f"no anchoring key: pass --anchor-key-file or set {KEY_ENV}")
    if not value.startswith("0x"):
        value = "0x" + value
    if len(value) != 66:
        raise AnchorError("the anchoring key must be 32 bytes of hex")
    return value


_TESTER: list[EthereumTesterProvider] = []


def _tester_provider() -> EthereumTesterProvider:
    """One in-process eth-tester chain per process, shared by every ``evm+tester:`` anchor."""
    if not _TESTER:
        from web3 import EthereumTesterProvider

        _TESTER.append(EthereumTesterProvider())
    return _TESTER[0]


@dataclass(frozen=True)
class ChainAnchor:
    log_size: int
    log_root: bytes
    block_hash: bytes


class EvmAnchor:
    """One LedgerAnchor contract on one chain, used by one account.

    Parameters
    ----------
    url : str
        ``evm+http://HOST:PORT`` or ``evm+tester:``.
    federation_id : str
        The federation whose ledger is anchored (the contract records its SHA-256).
    private_key : str, optional
        Hex key of the account that deploys and anchors (the contract owner); not needed to read.
    contract : str, optional
        Address of a deployed LedgerAnchor; deployed on first use when absent.
    chain_id : int, optional
        Expected chain id; a node on another chain is refused.
    confirmations : int
        Blocks to wait for after each anchor transaction.
    poa : bool
        Inject web3's proof-of-authority middleware (Clique/QBFT chains).
    fee_mode : str
        ``auto`` / ``eip1559`` / ``legacy`` (gas price) / ``zero`` (free private chains).
    """

    def __init__(
        self,
        url: str,
        *,
        federation_id: str,
        private_key: str | None = None,
        contract: str | None = None,
        chain_id: int | None = None,
        confirmations: int = 0,
        poa: bool = False,
        fee_mode: str = "auto",
        timeout: float = 30.0,
    ) -> None:
        try:
            from web3 import Web3
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise AnchorError("anchoring needs web3: pip install 'flower-chain[evm]'") from e
        if fee_mode not in FEE_MODES:
            raise AnchorError(f"unknown fee mode {fee_mode!r}; choose one of {', '.join(FEE_MODES)}")
        self.url, self.fee_mode, self.confirmations, self.timeout = url, fee_mode, confirmations, timeout
        self.federation = hashlib.sha256(federation_id.encode()).digest()
        if url.startswith("evm+tester:"):
            self.w3 = Web3(_tester_provider())
        elif url.startswith(("evm+http://", "evm+https://")):
            self.w3 = Web3(Web3.HTTPProvider(url[len("evm+") :], request_kwargs={"timeout": timeout}))
        else:
            raise AnchorError(f"{url!r}: anchor URLs look like evm+http://HOST:PORT")
        if poa:
            from web3.middleware import ExtraDataToPOAMiddleware

            self.w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        try:
            actual_chain = self.w3.eth.chain_id
        except Exception as e:  # noqa: BLE001 - any transport failure means: not reachable
            raise AnchorError(f"cannot reach the Ethereum node at {url[len('evm+') :]}: {type(e).__name__}") from e
        if chain_id is not None and actual_chain != chain_id:
            raise AnchorError(f"the node at {url} is on chain {actual_chain}, not the expected chain {chain_id}")
        self.chain_id = actual_chain
        self.account = self.w3.eth.account.from_key(private_key) if private_key else None
        art = artifact()
        self._abi, self._bytecode = art["abi"], art["bytecode"]
        if not contract and self.account is None:
            raise AnchorError("give the contract address (--anchor-contract) to read anchors without a key")
        self.contract = self._attach(contract) if contract else self._deploy()

    # -- contract ----------------------------------------------------------------------------------
    def _attach(self, address: str) -> Contract:
        if not self.w3.is_address(address):
            raise AnchorError(f"{address!r} is not an Ethereum address")
        address = self.w3.to_checksum_address(address)
        if not self.w3.eth.get_code(address):
            raise AnchorError(f"no contract at {address} on chain {self.chain_id}")
        c = self.w3.eth.contract(address=address, abi=self._abi)
        try:
            magic, federation, owner = (
                c.functions.MAGIC().call(),
                c.functions.federation().call(),
                c.functions.owner().call(),
            )
        except Exception as e:  # noqa: BLE001 - a foreign contract fails these calls in many ways
            raise AnchorError(f"the contract at {address} is not a flower-chain LedgerAnchor") from e
        if bytes(magic) != MAGIC:
            raise AnchorError(f"the contract at {address} is not a flower-chain LedgerAnchor")
        if bytes(federation) != self.federation:
            raise AnchorError(f"the contract at {address} anchors another federation")
        self.owner = owner
        return c

    def _fees(self) -> dict[str, int]:
        if self.fee_mode == "zero":
            return {"gasPrice": 0}
        if self.fee_mode == "legacy":
            return {"gasPrice": self.w3.eth.gas_price}
        block = self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            if self.fee_mode == "eip1559":
                raise AnchorError("the chain has no EIP-1559 base fee; use fee mode legacy or zero")
            return {"gasPrice": self.w3.eth.gas_price}
        tip = self.w3.to_wei(1, "gwei")
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    def _send(self, fn_or_ctor: Any, gas: int) -> Any:  # a web3 ContractFunction or ContractConstructor
        if self.account is None:
            raise AnchorError("no anchoring key: pass --anchor-key-file or set " + KEY_ENV)
        tx = fn_or_ctor.build_transaction(
            {
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address),
                "chainId": self.chain_id,
                "gas": gas,
                **self._fees(),
            }
        )
        price = tx.get("maxFeePerGas", tx.get("gasPrice", 0))
        balance = self.w3.eth.get_balance(self.account.address)
        if price and balance < gas * price:
            raise AnchorError(
                f"account {self.account.address} cannot pay for gas (balance {balance} wei): fund it "
                "or use fee mode zero on a free private chain"
            )
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout)
        if receipt["status"] != 1:
            raise AnchorError(f"transaction {tx_hash.hex()} reverted")
        while self.confirmations and self.w3.eth.block_number < receipt["blockNumber"] + self.confirmations:
            import time

            time.sleep(0.5)
        return receipt

    def _deploy(self) -> Contract:
        ctor = self.w3.eth.contract(abi=self._abi, bytecode=self._bytecode).constructor(self.federation)
        receipt = self._send(ctor, gas=1_000_000)
        return self._attach(receipt["contractAddress"])

    @property
    def address(self) -> str:
        return self.contract.address

    def latest(self) -> tuple[int, int]:
        """``(anchor count, highest anchored height)`` as the contract reports them (count 0: nothing anchored)."""
        return int(self.contract.functions.anchorCount().call()), int(self.contract.functions.latestHeight().call())

    # -- anchors -----------------------------------------------------------------------------------
    def get(self, height: int) -> ChainAnchor | None:
        size, root, block_hash, _at = self.contract.functions.getAnchor(height).call()
        if bytes(block_hash) == b"\x00" * 32:
            return None
        return ChainAnchor(int(size), bytes(root), bytes(block_hash))

    def anchor(self, height: int, log_size: int, log_root: bytes, block_hash: bytes) -> dict[str, Any]:
        """Publish one block's checkpoint; returns the transaction hash, gas used and chain block."""
        if self.get(height) is not None:
            raise AnchorError(f"height {height} is already anchored")
        fn = self.contract.functions.anchor(height, log_size, log_root, block_hash)
        receipt = self._send(fn, gas=150_000)
        return {
            "tx": receipt["transactionHash"].hex(),
            "gas_used": int(receipt["gasUsed"]),
            "chain_block": int(receipt["blockNumber"]),
        }
