"""Signed documents a customer can check without trusting us: processing receipts (one per
request) and deletion receipts (a tenant's retained data purged).

A processing receipt carries the request's audit entry field for field (`record`), where that
entry sits in its zone's audit log (`audit`: index, leaf hash, an inclusion proof up to a signed
tree head, and the head itself) and the zone key's signature over all of it. Anyone holding the
zone's public key (`/.well-known/tokenport/keys`) can check, offline, that the gateway signed this
record and that it is in the log every other customer's receipt is checked against.

Extending a receipt: facts known when the request is recorded go into its usage record and so
into its audit entry (`record`); facts learnt later (its energy, allocated once the metering
windows it ran in close) are sections of their own (`energy`), signed with the rest. The
format's version is in `type`.
"""

from __future__ import annotations

import hashlib

import orjson

from tokenport.audit.entries import canonical
from tokenport.audit.heads import Signer, TreeHead, verify_signature
from tokenport.audit.merkle import leaf_hash, verify_inclusion
from tokenport.audit.verify import StoredHead

RECEIPT = "tokenport.receipt.v1"
DELETION = "tokenport.deletion_receipt.v1"


def message(doc: dict) -> bytes:
    """The signed bytes: the document's canonical JSON without its signature."""
    return canonical({k: v for k, v in doc.items() if k != "signature"})


def sign(doc: dict, signer: Signer) -> dict:
    doc = {**doc, "key_id": signer.key_id, "public_key": signer.public_key_hex}
    return {**doc, "signature": signer.sign(message(doc))}


def processing_receipt(
    entry: bytes,
    index: int,
    proof: list[bytes],
    head: StoredHead,
    signer: Signer,
    issued_at: str,
    sections: dict | None = None,
) -> dict:
    """`sections`: facts learnt after the request (its `energy`), signed with the rest."""
    record = orjson.loads(entry)
    doc = {
        "type": RECEIPT,
        "receipt_id": record["request_id"],
        "issued_at": issued_at,
        "record": record,
        "audit": {
            "zone": head.head.zone,
            "index": index,
            "leaf_hash": leaf_hash(entry).hex(),
            "inclusion_proof": [p.hex() for p in proof],
            "tree_head": {**head.head.__dict__, "key_id": head.key_id, "signature": head.signature},
        },
        **(sections or {}),
    }
    return sign(doc, signer)


def deletion_receipt(
    tenant_id: str, zone: str, request_ids: list[str], audit_index: int, signer: Signer, deleted_at: str
) -> dict:
    """Proof that the listed retained records were deleted; the ids are committed to by hash."""
    ids = sorted(request_ids)
    doc = {
        "type": DELETION,
        "tenant_id": tenant_id,
        "zone": zone,
        "deleted_at": deleted_at,
        "records_deleted": len(ids),
        "request_ids_sha256": ids_digest(ids),
        "request_ids": ids,
        "audit_index": audit_index,
    }
    return sign(doc, signer)


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _public_key(doc: dict, key_id: str, trusted: dict[str, str] | None, problems: list[str]) -> str | None:
    """The public key to check `key_id`'s signatures with: a pinned one, or the document's own."""
    if trusted is not None:
        if key_id not in trusted:
            problems.append(f"key {key_id} is not among the trusted keys")
            return None
        return trusted[key_id]
    embedded = doc.get("public_key", "")
    try:
        own_id = hashlib.sha256(bytes.fromhex(embedded)).hexdigest()[:32]
    except ValueError:
        own_id = None
    if own_id != key_id:
        problems.append("the embedded public key does not match the key id")
        return None
    return embedded


def verify_receipt(doc: dict, trusted: dict[str, str] | None = None) -> list[str]:
    """What is wrong with a receipt (empty: sound). `trusted`: key id -> public key (hex), as
    published at /.well-known/tokenport/keys; without it the receipt's own key is used, which
    proves integrity but not who signed: pin the keys for that."""
    problems: list[str] = []
    try:
        kind = doc.get("type")
        if kind == DELETION:
            return _verify_deletion(doc, trusted)
        if kind != RECEIPT:
            return [f"unknown document type {kind!r}"]
        key = _public_key(doc, doc["key_id"], trusted, problems)
        if key is not None and not verify_signature(key, message(doc), doc["signature"]):
            problems.append("the receipt's signature does not verify")
        record, audit = doc["record"], doc["audit"]
        h = audit["tree_head"]
        if record.get("request_id") != doc["receipt_id"]:
            problems.append("the record is not the receipt's request")
        if not (record.get("zone") == audit["zone"] == h["zone"]):
            problems.append("the record, the log and the tree head name different zones")
        leaf = leaf_hash(canonical(record))
        if leaf.hex() != audit["leaf_hash"]:
            problems.append("the record does not hash to the logged leaf: a field was altered")
        proof = [bytes.fromhex(p) for p in audit["inclusion_proof"]]
        if not verify_inclusion(audit["index"], h["size"], leaf, proof, bytes.fromhex(h["root"])):
            problems.append("the inclusion proof does not lead to the tree head's root")
        head_key = _public_key(doc, h["key_id"], trusted, problems)
        head = TreeHead(h["zone"], h["size"], h["root"], h["at"])
        if head_key is not None and not verify_signature(head_key, head.message(), h["signature"]):
            problems.append("the tree head's signature does not verify")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"malformed receipt ({type(exc).__name__}: {exc})")
    return problems


def _verify_deletion(doc: dict, trusted: dict[str, str] | None) -> list[str]:
    problems: list[str] = []
    key = _public_key(doc, doc["key_id"], trusted, problems)
    if key is not None and not verify_signature(key, message(doc), doc["signature"]):
        problems.append("the receipt's signature does not verify")
    if ids_digest(doc["request_ids"]) != doc["request_ids_sha256"] or doc["records_deleted"] != len(
        doc["request_ids"]
    ):
        problems.append("the listed request ids do not match their count and digest")
    return problems
