"""Repository for invoices: insert once, never update; voids are rows of their own."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from tokenport.billing.invoices import InvoiceConflict, canonical
from tokenport.billing.ledger import Transaction
from tokenport.store.audit import audit_action
from tokenport.store.billing import write_transactions
from tokenport.store.db import write_lock
from tokenport.store.schema import invoice_voids, invoices, ledger_transactions


class InvoiceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(
        self, doc: dict, tenant_id: str, generation: int, issued_at: datetime, txs: list[Transaction] = ()
    ) -> None:
        """The document, and the ledger transactions it bills (plan fees) unless already posted
        (they have fixed ids: a re-issue after a void posts nothing twice), atomically."""
        text = canonical(doc)
        try:
            with self.engine.begin() as conn:
                audit_action(
                    conn,
                    "invoice.issue",
                    issued_at,
                    tenant_id=tenant_id,
                    invoice_id=doc["id"],
                    number=doc["number"],
                    period=doc["period"],
                    total_nano_usd=doc["total_nano_usd"],
                    sha256=hashlib.sha256(text.encode()).hexdigest(),
                )
                if txs:
                    ids = [tx.id for tx in txs]
                    known = set(
                        conn.execute(
                            select(ledger_transactions.c.id).where(ledger_transactions.c.id.in_(ids))
                        ).scalars()
                    )
                    write_transactions(conn, [tx for tx in txs if tx.id not in known])
                conn.execute(
                    insert(invoices).values(
                        id=doc["id"],
                        tenant_id=tenant_id,
                        period=doc["period"],
                        generation=generation,
                        number=doc["number"],
                        total_nano_usd=doc["total_nano_usd"],
                        document=text,
                        sha256=hashlib.sha256(text.encode()).hexdigest(),
                        issued_at=issued_at,
                    )
                )
        except IntegrityError as exc:
            raise InvoiceConflict(doc["number"]) from exc

    def for_period(self, tenant_id: str, period: str) -> list[dict]:
        """All generations, oldest first, each with its void (if any)."""
        q = (
            select(invoices, invoice_voids.c.reason, invoice_voids.c.voided_at)
            .outerjoin(invoice_voids, invoice_voids.c.invoice_id == invoices.c.id)
            .where(invoices.c.tenant_id == tenant_id, invoices.c.period == period)
            .order_by(invoices.c.generation)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def get(self, invoice_id: str) -> dict | None:
        q = (
            select(invoices, invoice_voids.c.reason, invoice_voids.c.voided_at)
            .outerjoin(invoice_voids, invoice_voids.c.invoice_id == invoices.c.id)
            .where(invoices.c.id == invoice_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row else None

    def list(self, tenant_id: str | None = None) -> list[dict]:
        q = (
            select(
                invoices.c.id,
                invoices.c.tenant_id,
                invoices.c.period,
                invoices.c.number,
                invoices.c.total_nano_usd,
                invoices.c.issued_at,
                invoice_voids.c.voided_at,
            )
            .outerjoin(invoice_voids, invoice_voids.c.invoice_id == invoices.c.id)
            .order_by(invoices.c.period, invoices.c.generation)
        )
        if tenant_id is not None:
            q = q.where(invoices.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def void(self, invoice_id: str, reason: str, at: datetime) -> bool:
        try:
            with self.engine.begin() as conn:
                write_lock(conn)
                tenant_id = conn.execute(
                    select(invoices.c.tenant_id).where(invoices.c.id == invoice_id)
                ).scalar()
                if tenant_id is not None:
                    audit_action(
                        conn, "invoice.void", at, tenant_id=tenant_id, invoice_id=invoice_id, reason=reason
                    )
                conn.execute(insert(invoice_voids).values(invoice_id=invoice_id, reason=reason, voided_at=at))
        except IntegrityError:
            return False
        return True
