"""Signing tree heads and verifying the audit log (behind the CLI and the server's signing task).

Each zone has its own Ed25519 key, kept as a file in the server's key directory (mode 0600) and
created on first use; its public half is registered in the database. Several processes of one
deployment share the key directory (`[audit] keys_dir`), as they would share a TLS key.
`verify` trusts only the keys in the key directory: a key somebody added to the database cannot
vouch for a rewritten log.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from tokenport.audit.heads import Signer, TreeHead, public_hex
from tokenport.audit.merkle import NODE_LEVEL, inclusion_path
from tokenport.audit.ports import AuditRepository
from tokenport.audit.receipts import processing_receipt
from tokenport.audit.verify import verify_zone
from tokenport.clock import Clock, SystemClock, utc_iso
from tokenport.keyfiles import load_or_create


def _new_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


class AuditService:
    def __init__(self, store: AuditRepository, keys_dir: Path, clock: Clock | None = None) -> None:
        self.store = store
        self.keys_dir = keys_dir
        self.clock = clock or SystemClock()
        self._signers: dict[str, Signer] = {}
        self.sections = None  # record -> more signed sections of a receipt (energy), or None

    def signer(self, zone: str) -> Signer:
        if zone not in self._signers:
            pem = load_or_create(self.keys_dir / f"audit-{zone}.pem", _new_pem)
            private = load_pem_private_key(pem, None)
            assert isinstance(private, Ed25519PrivateKey)
            signer = Signer(zone, private)
            self.store.register_key(signer.key_id, zone, public_hex(signer.public), self.clock.now())
            self._signers[zone] = signer
        return self._signers[zone]

    def sign_heads(self, zone_: str | None = None) -> list[TreeHead]:
        """Sign each zone's head (or just `zone_`'s) if it grew since its last signed head."""
        signed = []
        for zone, (size, root) in sorted(self.store.sizes().items()):
            if (zone_ is None or zone == zone_) and size > self.store.last_head_size(zone):
                head = TreeHead(zone, size, root, utc_iso(self.clock.now()))
                signer = self.signer(zone)
                if self.store.save_head(head, signer.key_id, signer.sign(head.message())):
                    signed.append(head)
        return signed

    def receipt(self, request_id: str, tenant_id: str) -> dict | None:
        """The signed processing receipt of one of the tenant's requests; None if its audit entry
        is not (yet) written or the request is another tenant's. Signs a new tree head when no
        signed head covers the entry yet (heads are signed on demand as well as periodically)."""
        found = self.store.find_request(request_id)
        if found is None:
            return None
        zone, index, entry = found
        record = orjson.loads(entry)
        if record.get("tenant_id") != tenant_id:
            return None
        head = self.store.head_covering(zone, index)
        if head is None:
            self.sign_heads(zone)
            head = self.store.head_covering(zone, index)
        assert head is not None, "a signed head covers every entry once the zone's head is signed"
        proof = self.store.proof_source(zone, head.head.size, partial(inclusion_path, index, head.head.size))
        issued = utc_iso(self.clock.now())
        extra = self.sections(record) if self.sections is not None else None
        return processing_receipt(entry, index, proof, head, self.signer(zone), issued, extra)

    def trusted_keys(self) -> dict[str, str]:
        """key id -> public key (hex), from the key files."""
        keys = {}
        for path in sorted(self.keys_dir.glob("audit-*.pem")) if self.keys_dir.exists() else []:
            signer = Signer(path.stem[len("audit-") :], load_pem_private_key(path.read_bytes(), None))
            keys[signer.key_id] = public_hex(signer.public)
        return keys

    def verify(self) -> list[dict]:
        """Per zone: its size, the problems found and the first bad index (None when sound)."""
        keys = self.trusted_keys()
        report = []
        for zone in self.store.zones():
            entries = self.store.entries(zone)
            nodes = (NODE_LEVEL, self.store.nodes(zone))
            problems, first_bad = verify_zone(zone, entries, self.store.heads(zone), keys, nodes)
            report.append(
                {"zone": zone, "entries": len(entries), "problems": problems, "first_bad_index": first_bad}
            )
        return report
