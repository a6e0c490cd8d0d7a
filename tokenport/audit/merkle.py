"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs. Plain Python.

A leaf hash is SHA-256(0x00 || entry), an interior node SHA-256(0x01 || left || right); the tree
over n leaves splits at the largest power of two below n. Proofs are lists of 32-byte hashes;
the verifiers follow RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()
NODE_LEVEL = 6  # subtrees of 64 leaves and more are stored; smaller ones are hashed from leaves


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of one leaf."""
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root(leaves[:k])]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[n]): the tree of the first `first` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise ValueError(f"a tree of {first} is not a prefix of a tree of {n}")
    if first in (0, n):
        return []
    return _subproof(first, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


# A perfect, aligned subtree's hash: (level, index) -> the root of leaves
# [index * 2**level, (index + 1) * 2**level). Proofs built from it read O(log n) hashes.
Subtree = Callable[[int, int], bytes]


def range_root(start: int, end: int, subtree: Subtree) -> bytes:
    """MTH(D[start:end]) for the ranges the RFC's recursion produces (start aligned to the
    largest power of two that fits), from perfect subtrees."""
    n = end - start
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return subtree(level, start >> level)
    k = _split(n)
    return node_hash(range_root(start, start + k, subtree), range_root(start + k, end, subtree))


def inclusion_path(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[size]), as `inclusion_proof`, from perfect subtrees."""
    if not 0 <= index < size:
        raise IndexError(f"leaf {index} is not in a tree of {size}")
    out: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            out.append(range_root(start + k, end, subtree))
            end = start + k
        else:
            out.append(range_root(start, start + k, subtree))
            start += k
    return out[::-1]


def consistency_path(first: int, size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(first, D[size]), as `consistency_proof`, from perfect subtrees."""
    if not 0 <= first <= size:
        raise ValueError(f"a tree of {first} is not a prefix of a tree of {size}")
    if first in (0, size):
        return []
    out: list[bytes] = []
    start, end, m, whole = 0, size, first, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            out.append(range_root(start + k, end, subtree))
            end = start + k
        else:
            out.append(range_root(start, start + k, subtree))
            start, m, whole = start + k, m - k, False
    if not whole:
        out.append(range_root(start, end, subtree))
    return out[::-1]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root_hash


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2 (with the trivial cases: an empty first tree, equal sizes)."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    return _verify_consistency_path(first, second, first_root, second_root, proof)


def _verify_consistency_path(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2, steps 1 to 7, for 0 < first < second."""
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is a subtree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0


class Frontier:
    """The tree's right edge: the roots of its perfect subtrees, largest first (at most log2 n).
    Appending a leaf and computing the root are O(log n), with no other leaf at hand."""

    def __init__(self, size: int = 0, nodes: Sequence[tuple[int, bytes]] = ()) -> None:
        self.size = size
        self.nodes = list(nodes)  # (height, hash)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; the perfect subtrees it completed, as (level, index, hash)."""
        self.nodes.append((0, leaf))
        self.size += 1
        completed = []
        while len(self.nodes) > 1 and self.nodes[-1][0] == self.nodes[-2][0]:
            (h, left), (_, right) = self.nodes[-2], self.nodes[-1]
            merged = node_hash(left, right)
            self.nodes[-2:] = [(h + 1, merged)]
            completed.append((h + 1, (self.size >> (h + 1)) - 1, merged))
        return completed

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r
