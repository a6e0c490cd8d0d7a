"""The repository the audit service needs (implemented by `store/audit.py`): the zones' logs,
their stored subtrees, signed heads and signing keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

from tokenport.audit.heads import TreeHead
from tokenport.audit.verify import StoredEntry, StoredHead

T = TypeVar("T")


class AuditRepository(Protocol):
    def sizes(self) -> dict[str, tuple[int, str]]:
        """Each zone's size and current root (hex)."""
        ...

    def zones(self) -> list[str]: ...

    def entries(self, zone: str) -> list[StoredEntry]: ...

    def nodes(self, zone: str) -> dict[tuple[int, int], str]:
        """The stored subtree hashes (level >= merkle.NODE_LEVEL): (level, index) -> hex."""
        ...

    def proof_source(self, zone: str, size: int, build: Callable[[Callable[[int, int], bytes]], T]) -> T:
        """Run a proof builder (audit/merkle.py) against the zone's stored subtrees."""
        ...

    def find_request(self, request_id: str) -> tuple[str, int, bytes] | None:
        """(zone, index, entry) of a request's audit entry."""
        ...

    def head_covering(self, zone: str, index: int) -> StoredHead | None: ...

    def last_head_size(self, zone: str) -> int: ...

    def heads(self, zone: str) -> list[StoredHead]: ...

    def save_head(self, head: TreeHead, key_id: str, signature: str) -> bool: ...

    def register_key(self, key_id: str, zone: str, public_key: str, at: datetime) -> None: ...
