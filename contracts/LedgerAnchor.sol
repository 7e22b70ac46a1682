// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title flower-chain ledger anchor
/// @notice The owner publishes, once per block height, the RFC 9162 log size and root and the block hash
///         of a flower-chain round ledger. Anyone can read the anchors back and compare them with a copy
///         of the ledger: a ledger rewritten after anchoring no longer matches.
contract LedgerAnchor {
    struct Anchor {
        uint64 logSize;
        uint64 anchoredAt;
        bytes32 logRoot;
        bytes32 blockHash;
    }

    /// @notice Marker that tells a flower-chain client this is an anchor contract ("flc1").
    bytes4 public constant MAGIC = 0x666c6331;

    address public immutable owner;
    /// @notice SHA-256 of the federation id whose ledger this contract anchors.
    bytes32 public immutable federation;
    uint64 public anchorCount;
    uint64 public latestHeight;

    mapping(uint64 => Anchor) private anchors;

    event Anchored(uint64 indexed height, uint64 logSize, bytes32 logRoot, bytes32 blockHash);

    error NotOwner();
    error AlreadyAnchored(uint64 height);
    error EmptyAnchor();

    constructor(bytes32 federation_) {
        owner = msg.sender;
        federation = federation_;
    }

    /// @notice Publish the checkpoint of block `height`; a second anchor for the same height reverts.
    function anchor(uint64 height, uint64 logSize, bytes32 logRoot, bytes32 blockHash) external {
        if (msg.sender != owner) revert NotOwner();
        if (blockHash == bytes32(0)) revert EmptyAnchor();
        if (anchors[height].blockHash != bytes32(0)) revert AlreadyAnchored(height);
        anchors[height] = Anchor(logSize, uint64(block.timestamp), logRoot, blockHash);
        anchorCount += 1;
        if (height > latestHeight) latestHeight = height;
        emit Anchored(height, logSize, logRoot, blockHash);
    }

    /// @notice The anchor of `height` (all zero when that height was never anchored).
    function getAnchor(uint64 height)
        external
        view
        returns (uint64 logSize, bytes32 logRoot, bytes32 blockHash, uint64 anchoredAt)
    {
        Anchor storage a = anchors[height];
        return (a.logSize, a.logRoot, a.blockHash, a.anchoredAt);
    }
}
