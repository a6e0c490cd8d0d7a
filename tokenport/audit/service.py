"""Signing tree heads and verifying the audit log (behind the CLI and the server's signing task).

Each zone has its own Ed25519 key, kept as a file in the server's key directory (mode 0600) and
created on first use; its public half is registered in the database. Several processes of one
deployment share the key directory (`[audit] keys_dir`), as they would share a TLS key.
`verify` trusts only the keys in the key directory: a key somebody added to the database cannot
vouch for a rewritten log.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from tokenport.audit.heads import Signer, TreeHead, public_hex
from tokenport.audit.verify import verify_zone
from tokenport.clock import Clock, SystemClock, utc_iso
from tokenport.store.audit import AuditStore


def _create_key(path: Path) -> Ed25519PrivateKey:
    """A new key file, created whole or not at all; if another process made one first, that one."""
    private = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    try:
        os.link(tmp, path)  # atomic, and refuses to replace an existing key
    except FileExistsError:
        loaded = load_pem_private_key(path.read_bytes(), None)
        assert isinstance(loaded, Ed25519PrivateKey)
        private = loaded
    finally:
        tmp.unlink()
    return private


class AuditService:
    def __init__(self, store: AuditStore, keys_dir: Path, clock: Clock | None = None) -> None:
        self.store = store
        self.keys_dir = keys_dir
        self.clock = clock or SystemClock()
        self._signers: dict[str, Signer] = {}

    def signer(self, zone: str) -> Signer:
        if zone not in self._signers:
            path = self.keys_dir / f"audit-{zone}.pem"
            if path.exists():
                private = load_pem_private_key(path.read_bytes(), None)
                assert isinstance(private, Ed25519PrivateKey)
            else:
                private = _create_key(path)
            signer = Signer(zone, private)
            self.store.register_key(signer.key_id, zone, public_hex(signer.public), self.clock.now())
            self._signers[zone] = signer
        return self._signers[zone]

    def sign_heads(self) -> list[TreeHead]:
        """Sign each zone's head if it grew since its last signed head."""
        signed = []
        for zone, (size, root) in sorted(self.store.sizes().items()):
            if size > self.store.last_head_size(zone):
                head = TreeHead(zone, size, root, utc_iso(self.clock.now()))
                signer = self.signer(zone)
                if self.store.save_head(head, signer.key_id, signer.sign(head.message())):
                    signed.append(head)
        return signed

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
            problems, first_bad = verify_zone(zone, entries, self.store.heads(zone), keys)
            report.append(
                {"zone": zone, "entries": len(entries), "problems": problems, "first_bad_index": first_bad}
            )
        return report
