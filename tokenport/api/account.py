"""The customer's own view, with its API key: balance, usage, invoices, and retained records.
A key sees its own tenant only. Reads run in a thread (they touch the database)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tokenport.tenancy.keys import NAME_RE, KeyRecord

if TYPE_CHECKING:
    from tokenport.api.services import AccountServices

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.admin import parse_since
from tokenport.api.keyed import keyed, when_recorded
from tokenport.api.views import balance_view
from tokenport.billing.invoices import render_csv, render_html
from tokenport.energy.reports import green_csv, green_html
from tokenport.energy.units import EnergyInputError, period_of
from tokenport.fleets.report import report_csv, report_html
from tokenport.gateway.errors import ApiError, bad_request
from tokenport.money import nano_to_usd
from tokenport.tenancy.service import InvalidInput, NotFound

GROUPS = ("day", "model", "key", "device", "product")
TOTALS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_nano_usd")
# Facility energy (x PUE), the IT energy at the node, green energy (millijoules); carbon (ug CO2e).
MAX_LIMIT = 100_000  # groups per answer
ENERGY_FIELDS = ("energy_mj", "it_energy_mj", "green_mj", "co2_location_ug", "co2_market_ug")


@keyed
async def balance(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    view = await run_in_threadpool(lambda: balance_view(svc.billing_service.balance(key.tenant_name)))
    held = await run_in_threadpool(svc.charging.held, key.tenant_id, svc.clock.now())  # requests in flight
    view["held_usd"] = nano_to_usd(held)
    return Response(orjson.dumps(view), media_type="application/json")


@keyed
async def usage(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    q = request.query_params
    group_by = q.get("group_by", "day")
    if group_by not in GROUPS:
        raise bad_request(f"'group_by' must be one of {', '.join(GROUPS)}", param="group_by")
    try:
        start, end = parse_since(q.get("start")), parse_since(q.get("end"))
    except InvalidInput as exc:
        raise bad_request(str(exc).replace("'since'", "'start'/'end'"), param="start") from None
    limit = _limit(q.get("limit"))
    rows = await run_in_threadpool(svc.usage_store.grouped, key.tenant_id, group_by, start, end)
    energy = await run_in_threadpool(svc.request_energy.group_figures, key.tenant_id, group_by, start, end)
    for r in rows:
        r["cost_usd"] = nano_to_usd(r["cost_nano_usd"])
        r.update(energy.get(r[group_by], dict.fromkeys(ENERGY_FIELDS, 0)))
    totals = {k: sum(r[k] for r in rows) for k in (*TOTALS, *ENERGY_FIELDS)}  # over every group
    totals["cost_usd"] = nano_to_usd(totals["cost_nano_usd"])
    shown = rows if limit is None else rows[:limit]
    body = {
        "object": "list",
        "group_by": group_by,
        "data": shown,
        "has_more": len(shown) < len(rows),
        "totals": totals,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _limit(raw: str | None) -> int | None:
    """`?limit=N`: at most N groups, the first in order (1 to MAX_LIMIT)."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LIMIT):
        raise bad_request(f"'limit' must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


def _rendered(
    doc: dict,
    fmt: str,
    to_csv: Callable[[dict], str] = render_csv,
    to_html: Callable[[dict], str] = render_html,
) -> Response:
    """A document (an invoice by default) as JSON, CSV or HTML."""
    if fmt == "csv":
        return Response(to_csv(doc), media_type="text/csv")
    if fmt == "html":
        return Response(to_html(doc), media_type="text/html")
    return Response(orjson.dumps(doc), media_type="application/json")


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv", "html"):
        raise bad_request("'format' must be json, csv or html", param="format")
    return fmt


@keyed
async def upcoming(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    """The running month's invoice to date (`?period=YYYY-MM` for another), from the ledger;
    nothing is issued or stored."""
    fmt = _format(request)
    period = request.query_params.get("period")
    try:
        doc = await run_in_threadpool(svc.billing_service.preview_invoice, key.tenant_name, period)
    except InvalidInput as exc:
        raise bad_request(str(exc), param="period") from None
    return _rendered(doc, fmt)


@keyed
async def invoices(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    items = await run_in_threadpool(svc.billing_service.list_invoices, key.tenant_name)
    return Response(orjson.dumps({"object": "list", "data": items}), media_type="application/json")


@keyed
async def invoice(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    invoice_id = request.path_params["invoice_id"]
    fmt = _format(request)
    try:
        doc = await run_in_threadpool(svc.billing_service.invoice, invoice_id, key.tenant_id)
    except NotFound:  # another tenant's invoice is indistinguishable from none
        raise ApiError(404, f"No invoice {invoice_id}", "invalid_request_error", "not_found") from None
    return _rendered(doc, fmt)


@keyed
async def retained(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    """What the tenant opted to retain of one request, decrypted for that tenant only."""
    request_id = request.path_params["request_id"]
    doc = await when_recorded(svc.vault.read, request_id, key.tenant_id)
    if doc is None:
        raise ApiError(
            404,
            f"Nothing retained for request '{request_id}' (retention off, expired, purged, or another "
            "tenant's request)",
            "invalid_request_error",
            "not_found",
        )
    return Response(orjson.dumps(doc), media_type="application/json")


@keyed
async def green(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    """The tenant's green report for a month (`?period=YYYY-MM`, `&format=json|csv|html`)."""
    period = request.query_params.get("period") or period_of(svc.clock.now())
    fmt = _format(request)
    try:
        doc = await run_in_threadpool(
            svc.energy.green_report, key.tenant_id, key.tenant_name, key.zone, period
        )
    except EnergyInputError as exc:
        raise bad_request(str(exc), param="period") from None
    return _rendered(doc, fmt, green_csv, green_html)


@keyed
async def fleet_report(request: Request, svc: AccountServices, key: KeyRecord) -> Response:
    """One of the tenant's fleets, its month (`?period=YYYY-MM`, default this one;
    `&format=json|csv|html`): docs/fleets.md, "Fleet report"."""
    period = request.query_params.get("period") or period_of(svc.clock.now())
    fmt = _format(request)

    def build() -> dict:
        name = request.path_params["fleet"]
        fleet = svc.fleets.store.fleet(name) if NAME_RE.fullmatch(name) else None
        if fleet is None or fleet.tenant_id != key.tenant_id:  # another's fleet is as missing as none
            raise ApiError(404, "No such fleet", "invalid_request_error", "not_found")
        available = svc.billing_service.balance(key.tenant_name).available
        return svc.fleets.report(fleet.name, period, available)

    try:
        doc = await run_in_threadpool(build)
    except InvalidInput as exc:
        raise bad_request(str(exc), param="period") from None
    return _rendered(doc, fmt, report_csv, report_html)


routes = [
    Route("/v1/account/green", green, methods=["GET"]),
    Route("/v1/account/fleets/{fleet}/report", fleet_report, methods=["GET"]),
    Route("/v1/retained/{request_id}", retained, methods=["GET"]),
    Route("/v1/account/invoices", invoices, methods=["GET"]),
    Route("/v1/account/invoices/upcoming", upcoming, methods=["GET"]),  # before {invoice_id}
    Route("/v1/account/invoices/{invoice_id}", invoice, methods=["GET"]),
    Route("/v1/account/balance", balance, methods=["GET"]),
    Route("/v1/account/usage", usage, methods=["GET"]),
]
