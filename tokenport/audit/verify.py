"""Recompute a zone's audit log from its entries and check it against what is stored and signed.

Each stored entry carries its index, its leaf hash and the tree root once it was appended; each
signed head a size, a root and a signature. Recomputing from the entries alone, in index order,
finds the first index where anything was modified, deleted, inserted or reordered; the signed
heads catch a log rewritten consistently from some index on, or cut short.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenport.audit.heads import TreeHead, verify_signature
from tokenport.audit.merkle import Frontier, leaf_hash


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry: bytes
    leaf: str  # hex
    root: str  # hex: the tree root at size index + 1


@dataclass(frozen=True)
class StoredHead:
    head: TreeHead
    key_id: str
    signature: str


def verify_zone(
    zone: str,
    entries: list[StoredEntry],
    heads: list[StoredHead],
    public_keys: dict[str, str],
    nodes: tuple[int, dict[tuple[int, int], str]] | None = None,
) -> tuple[list[str], int | None]:
    """(problems, the first bad index or None). `nodes`: (lowest stored level, the stored
    subtree hashes proofs are built from), checked against the recomputed tree."""
    problems: list[str] = []
    node_level, stored = nodes if nodes is not None else (0, None)
    roots, expected, first_bad = _replay(zone, entries, node_level, problems)
    first_bad = _check_heads(zone, heads, public_keys, roots, first_bad, problems)
    if stored is not None and first_bad is None and stored != expected:
        first_bad = _check_nodes(zone, expected, stored, problems)
    return problems, first_bad


def _replay(
    zone: str, entries: list[StoredEntry], node_level: int, problems: list[str]
) -> tuple[list[str], dict[tuple[int, int], str], int | None]:
    """Recompute the tree from the entries in index order, up to the first that does not check
    out: (the roots of the prefix that does, the subtree hashes from `node_level` up, the first
    bad index or None)."""
    roots: list[str] = []
    frontier = Frontier()
    expected: dict[tuple[int, int], str] = {}
    for position, e in enumerate(entries):
        if e.index != position:
            what = "missing" if e.index > position else "out of order or repeated"
            problems.append(f"{zone}: entry {position} is {what} (found index {e.index})")
            return roots, expected, position
        leaf = leaf_hash(e.entry)
        for level, i, h in frontier.append(leaf):
            if level >= node_level:
                expected[(level, i)] = h.hex()
        root = frontier.root().hex()
        if leaf.hex() != e.leaf or root != e.root:
            problems.append(f"{zone}: entry {position} does not match its hashes (modified or moved)")
            return roots, expected, position
        roots.append(root)  # the roots of the prefix that checks out
    return roots, expected, None


def _check_heads(
    zone: str,
    heads: list[StoredHead],
    public_keys: dict[str, str],
    roots: list[str],
    first_bad: int | None,
    problems: list[str],
) -> int | None:
    """Check the recomputed roots against the signed heads, smallest first; the first bad index."""
    good = 0  # the largest signed size the entries still match
    for h in sorted(heads, key=lambda h: h.head.size):
        head = h.head
        key = public_keys.get(h.key_id)
        if key is None or head.zone != zone or not verify_signature(key, head.message(), h.signature):
            problems.append(f"{zone}: the tree head of size {head.size} has no valid signature")
            continue
        if head.size > len(roots) and first_bad is None:  # cut short (or broken above)
            problems.append(f"{zone}: a signed head covers {head.size} entries, only {len(roots)} check out")
            first_bad = len(roots)
        elif 0 < head.size <= len(roots) and roots[head.size - 1] != head.root:
            # rewritten consistently below a signed head: from after the last head it still matches
            problems.append(
                f"{zone}: entries {good} to {head.size - 1} differ from the signed head of size {head.size}"
            )
            first_bad = good if first_bad is None else min(first_bad, good)
        elif head.size <= len(roots):
            good = max(good, head.size)
    return first_bad


def _check_nodes(
    zone: str, expected: dict[tuple[int, int], str], stored: dict[tuple[int, int], str], problems: list[str]
) -> int:
    """The stored subtree hashes differ from the recomputed ones: the first leaf under the
    lowest, leftmost wrong one."""
    bad = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
    level, i = bad[0]
    problems.append(f"{zone}: the stored subtree hash at level {level}, index {i} is wrong")
    return i << level
