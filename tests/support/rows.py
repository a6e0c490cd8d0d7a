"""Rows the store tests insert directly."""

from __future__ import annotations

from datetime import datetime, timedelta


def usage_row(request_id: str, tenant_id: str, started: datetime, **kw) -> dict:
    row = dict(
        request_id=request_id,
        tenant_id=tenant_id,
        key_id="key_x",
        zone="overseas",
        endpoint="chat",
        model="mock-model",
        backend="mock",
        stream=True,
        prompt_tokens=10,
        cached_tokens=2,
        completion_tokens=20,
        usage_source="engine",
        finish_reason="stop",
        status=200,
        error_code=None,
        ttft_ms=5,
        duration_ms=50,
        client_disconnected=False,
        started_at=started,
        finished_at=started + timedelta(milliseconds=50),
    )
    row.update(kw)
    return row
