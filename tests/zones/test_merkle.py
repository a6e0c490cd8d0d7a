"""RFC 6962 Merkle trees: roots, inclusion and consistency proofs, and their verifiers."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenport.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_path,
    consistency_proof,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def test_hashing_follows_rfc_6962() -> None:
    assert bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == EMPTY_ROOT
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b, c = _leaves(3)
    assert root([a]) == a
    assert root([a, b]) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root([a, b, c]) == node_hash(node_hash(a, b), c)  # split at the largest power of two below n
    assert inclusion_proof(2, [a, b, c]) == [node_hash(a, b)]
    assert consistency_proof(2, [a, b, c]) == [c]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_leaf_is_included_and_nothing_else_is(n: int, data) -> None:
    leaves = _leaves(n)
    top = root(leaves)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = inclusion_proof(i, leaves)
    assert verify_inclusion(i, n, leaves[i], proof, top)
    assert not verify_inclusion(i, n, leaf_hash(b"forged"), proof, top)
    if n > 1:
        assert not verify_inclusion((i + 1) % n, n, leaves[i], proof, top)  # another index
    if proof:
        bad = list(proof)
        bad[data.draw(st.integers(0, len(bad) - 1))] = leaf_hash(b"x")
        assert not verify_inclusion(i, n, leaves[i], bad, top)
        assert not verify_inclusion(i, n, leaves[i], proof[:-1], top)  # a truncated path
    assert not verify_inclusion(i, n, leaves[i], proof, root(_leaves(n + 1)))  # another tree


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_prefix_is_consistent_and_a_rewritten_history_is_not(n: int, data) -> None:
    leaves = _leaves(n)
    m = data.draw(st.integers(min_value=0, max_value=n))
    proof = consistency_proof(m, leaves)
    assert verify_consistency(m, n, root(leaves[:m]), root(leaves), proof)
    if 0 < m < n:
        rewritten = list(leaves)
        rewritten[data.draw(st.integers(0, m - 1))] = leaf_hash(b"rewritten")
        assert not verify_consistency(m, n, root(rewritten[:m]), root(leaves), proof)
        assert not verify_consistency(m, n, root(leaves[:m]), root(rewritten), proof)
        assert not verify_consistency(m, n, root(leaves[:m]), root(leaves), [])


def test_out_of_range_is_refused() -> None:
    leaves = _leaves(4)
    with pytest.raises(IndexError):
        inclusion_proof(4, leaves)
    with pytest.raises(ValueError):
        consistency_proof(5, leaves)
    assert not verify_inclusion(4, 4, leaves[0], [], root(leaves))
    assert not verify_consistency(5, 4, root(leaves), root(leaves), [])


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=130))
def test_the_frontier_gives_the_same_root_at_every_size(n: int) -> None:
    leaves = _leaves(n)
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for i, leaf in enumerate(leaves):
        frontier.append(leaf)
        assert frontier.root() == root(leaves[: i + 1])
    again = Frontier(frontier.size, frontier.nodes)  # resumed from what is stored
    again.append(leaf_hash(b"next"))
    assert again.root() == root([*leaves, leaf_hash(b"next")])
    assert len(frontier.nodes) == bin(n).count("1")


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.data())
def test_proofs_from_perfect_subtrees_equal_proofs_from_all_leaves(n: int, data) -> None:
    """What the store serves (O(log n) stored subtrees) is exactly the RFC's proof."""
    leaves = _leaves(n)
    asked: list[tuple[int, int]] = []

    def subtree(level: int, index: int) -> bytes:
        asked.append((level, index))
        assert (index + 1) << level <= n, "only complete subtrees of this tree"
        return root(leaves[index << level : (index + 1) << level])

    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    first = data.draw(st.integers(min_value=0, max_value=n))
    assert inclusion_path(index, n, subtree) == inclusion_proof(index, leaves)
    assert consistency_path(first, n, subtree) == consistency_proof(first, leaves)
    assert len(asked) <= 4 * n.bit_length()  # logarithmic, not linear
    with pytest.raises(IndexError):
        inclusion_path(n, n, subtree)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=200))
def test_the_frontier_names_every_subtree_it_completes(n: int) -> None:
    leaves = _leaves(n)
    frontier = Frontier()
    completed = [node for leaf in leaves for node in frontier.append(leaf)]
    expected = {(level, i) for level in range(1, n.bit_length() + 1) for i in range(n >> level)}
    assert {(lv, i) for lv, i, _ in completed} == expected
    for level, i, h in completed:
        assert h == root(leaves[i << level : (i + 1) << level])
