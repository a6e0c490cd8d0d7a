"""The audit log and receipts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tokenport.cli.common import (
    _audit,
    _print,
)


def cmd_audit_sign(args: argparse.Namespace) -> int:
    heads = _audit(args).sign_heads()
    items = [h.__dict__ for h in heads]
    _print(
        items,
        args.json,
        [f"signed {h.zone}: size {h.size}, root {h.root}" for h in heads] or ["nothing new to sign"],
    )
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    report = _audit(args).verify()
    ok = not any(z["problems"] for z in report)
    lines = []
    for z in report:
        if z["problems"]:
            lines += [
                f"{z['zone']}: FAILED at index {z['first_bad_index']}",
                *(f"  {p}" for p in z["problems"]),
            ]
        else:
            lines.append(f"{z['zone']}: {z['entries']} entries, every hash and signed head checks out")
    _print({"ok": ok, "zones": report}, args.json, lines or ["the audit log is empty"])
    return 0 if ok else 1


def cmd_receipts_verify(args: argparse.Namespace) -> int:
    """Offline: needs only the receipt (and, to pin who signed it, the published keys)."""
    from pathlib import Path

    from tokenport.audit.receipts import verify_receipt

    try:
        doc = json.loads(Path(args.file).read_text())
        trusted = None
        if args.keys:
            published = json.loads(Path(args.keys).read_text())
            trusted = {k["key_id"]: k["public_key"] for k in published["keys"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read the receipt or keys: {exc}", file=sys.stderr)
        return 2
    problems = verify_receipt(doc, trusted) if isinstance(doc, dict) else ["not a JSON object"]
    pinned = "against the pinned keys" if trusted is not None else "against its own key (not pinned)"
    lines = [f"FAILED: {p}" for p in problems] or [f"receipt {doc.get('receipt_id', '')} verifies {pinned}"]
    _print({"ok": not problems, "problems": problems, "pinned": trusted is not None}, args.json, lines)
    return 0 if not problems else 1


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        audit, "sign", cmd_audit_sign, "sign each zone's tree head now (the server does it every 10 s)"
    )
    c.add_argument("--json", action="store_true")
    c = command(audit, "verify", cmd_audit_verify, "recompute the log; exit 1 naming the first bad index")
    c.add_argument("--json", action="store_true")

    receipts = sub.add_parser("receipts", help="signed processing receipts").add_subparsers(
        dest="sub", required=True
    )
    c = receipts.add_parser("verify", help="verify a receipt's signatures and inclusion proof offline")
    c.set_defaults(func=cmd_receipts_verify)
    c.add_argument("file", help="a receipt, as returned by GET /v1/receipts/{request_id}")
    c.add_argument("--keys", help="the published keys (/.well-known/tokenport/keys) to pin the signer")
    c.add_argument("--json", action="store_true")
