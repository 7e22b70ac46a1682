"""The rules a SecAgg+ node applies before revealing any share (clients/secagg_checks.py): each must refuse."""

from __future__ import annotations

import pytest

from flower_chain.clients.secagg_checks import header_problem, neighbours_of, parse_request, unmask_problem
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.secagg_masks import AES256_CTR_V1

NODES = [str(n) for n in range(101, 108)]


def header(**params):
    return {
        "federation_id": "fed",
        "round": 1,
        "parent": b"",
        "base_digest": b"",
        "params": {
            "num_shares": 5,
            "threshold": 3,
            "clipping_range": 8.0,
            "quantization_range": 2**22,
            "mod_range": 2**32,
            "max_weight": 1000.0,
            **params,
        },
        "sampled": NODES,
        "graph_seed": b"\x01" * 32,
        "generator": AES256_CTR_V1,
        "nonce": b"",
    }


def setting():
    h = header()
    me = NODES[0]
    neigh = neighbours_of(h, me)
    others = [n for n in neigh if n != me]
    state = {
        "header": h,
        "node_id": me,
        "masked_digest": b"mine",
        "sources": others,
        "seed_shares": {n: b"s" for n in neigh},
        "key_shares": {n: b"k" for n in neigh},
    }
    dropped = [others[0]]
    live = [n for n in NODES if n not in dropped]
    commit = {
        "round_id": b"r",
        "live": live,
        "dropped": dropped,
        "masked": {n: (b"mine" if n == me else b"x") for n in live},
    }
    active = sorted(set(neigh) & set(live))
    dead = sorted(set(neigh) & set(dropped))
    return state, commit, active, dead


def test_the_honest_request_passes():
    state, commit, active, dead = setting()
    assert unmask_problem(commit, active, dead, state) is None


def test_lists_that_differ_from_the_commitment_are_refused():
    state, commit, active, dead = setting()
    victim = next(n for n in active if n != state["node_id"])
    assert "active list" in unmask_problem(commit, [n for n in active if n != victim], dead + [victim], state)
    assert "dead list" in unmask_problem(commit, active, [], state)
    assert unmask_problem(commit, None, dead, state)


def test_own_input_missing_or_changed_in_the_commitment_is_refused():
    state, commit, active, dead = setting()
    commit["masked"][state["node_id"]] = b"other"
    assert "masked input" in unmask_problem(commit, active, dead, state)


def test_never_a_key_share_of_a_committed_input_nor_a_seed_share_of_a_dropped_node():
    state, commit, active, dead = setting()
    # a commitment that is inconsistent on its own (decoders refuse it; the rule holds regardless)
    bad = {**commit, "masked": {**commit["masked"], dead[0]: b"y"}}
    assert "key share" in unmask_problem(bad, active, dead, state)
    both = {**commit, "live": commit["live"] + dead}
    assert unmask_problem(both, sorted(set(active) | set(dead)), dead, state)


def test_revealing_a_seed_without_a_live_pairwise_mask_is_refused():
    state, commit, active, dead = setting()
    state["sources"] = dead  # every node it masked with dropped
    assert "expose" in unmask_problem(commit, active, dead, state)


def test_shares_never_received_are_refused():
    state, commit, active, dead = setting()
    del state["seed_shares"][active[-1]]
    assert "never shared keys" in unmask_problem(commit, active, dead, state)


@pytest.mark.parametrize(
    "params,part",
    [
        ({"threshold": 1}, "threshold"),
        ({"threshold": 9}, "threshold"),
        ({"mod_range": 3 * 2**20}, "mod_range"),
        ({"max_weight": -1.0}, "positive"),
        ({"quantization_range": 2**33}, "mod_range"),
    ],
)
def test_unsafe_round_headers_are_refused(params, part):
    assert part in header_problem(header(**params), NODES[0])
    assert "not among" in header_problem(header(), "999")
    assert header_problem(header(), NODES[0]) is None
    assert header_problem({"x": 1}, NODES[0])


def test_requests_that_do_not_parse_are_problems():
    assert isinstance(parse_request(b"\x00garbage"), str)
    assert isinstance(parse_request(None), str)
    assert isinstance(parse_request(encode({"stage": "setup"})), str)
    ok = {"stage": "setup", "round_id": b"", "content": {}, "proof": {}}
    assert parse_request(encode(ok)) == ok


def signed_commit(state, commit, active, sources_of):
    """The commitment with each live node's masked-input statement, signed by its key; the genesis keyring."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger.keys import key_id, raw_public
    from flower_chain.ledger.secagg import MASKED, StageStatement

    keys, statements = {}, {}
    for n in commit["live"]:
        k = Ed25519PrivateKey.generate()
        keys[key_id(k)] = raw_public(k)
        st = StageStatement(
            "fed",
            1,
            state["round_id"],
            MASKED,
            n,
            key_id(k),
            b"r",
            {
                "digest": commit["masked"][n],
                "weight": 1,
                "sources": sources_of(n),
                "seed_digest": b"d",
                "base_digest": b"",
            },
        ).to_bytes()
        statements[n] = [st, k.sign(st)]
    return {**commit, "statements": statements, "keyring": keys}


def test_neighbours_signed_sources_must_show_live_masks_both_ways():
    from flower_chain.clients.secagg_checks import sources_problem

    state, commit, active, dead = setting()
    state["round_id"] = b"r"
    me, live = state["node_id"], set(commit["live"])

    def honest(n):
        return [m for m in neighbours_of(state["header"], n) if m != n]

    good = signed_commit(state, commit, active, honest)
    assert sources_problem(good, active, state) is None
    assert unmask_problem(good, active, dead, state) is None
    victim = next(n for n in active if n != me)
    # the server withheld this node's shares from the victim: the victim did not mask with it
    one_sided = signed_commit(state, commit, active, lambda n: [m for m in honest(n) if not (n == victim and m == me)])
    assert "did not mask with this node" in sources_problem(one_sided, active, state)
    # the victim masked only with nodes that are committed dropped: its seed would expose its input
    exposed = signed_commit(state, commit, active, lambda n: dead if n == victim else honest(n))
    state_no = {**state, "sources": [m for m in state["sources"] if m != victim]}
    assert "expose" in sources_problem(exposed, active, state_no)
    # a statement not signed by its key, or of another round
    forged = {**good, "statements": {**good["statements"], victim: [good["statements"][victim][0], bytes(64)]}}
    assert "not signed" in sources_problem(forged, active, state)
    other = signed_commit({**state, "round_id": b"another"}, commit, active, honest)
    assert "not its masked input of this round" in sources_problem(other, active, state)
    assert live  # the commitment names live nodes


@pytest.mark.parametrize("version", [3, 0, -1, 2**70])
def test_a_header_naming_an_unknown_digest_version_is_refused(version):
    assert "unknown array digest version" in header_problem({**header(), "digest_version": version}, NODES[0])


@pytest.mark.parametrize("version", [True, "1", 1.0, b"\x01"])
def test_a_header_whose_digest_version_is_no_integer_is_refused(version):
    assert "digest_version" in header_problem({**header(), "digest_version": version}, NODES[0])


@pytest.mark.parametrize("version", [1, 2])
def test_a_header_naming_a_known_digest_version_or_none_is_taken(version):
    assert header_problem({**header(), "digest_version": version}, NODES[0]) is None
    assert header_problem(header(), NODES[0]) is None  # headers before the field: version 2
