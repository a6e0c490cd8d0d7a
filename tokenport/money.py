"""Money is integers.

- Ledger amounts are **nano-USD** (1e-9 USD): a signed 64-bit column holds $9.2 billion.
- Prices are **pico-USD per token** (1e-12 USD), which is the same number as micro-USD per million
  tokens: $0.30 / M tokens is 300_000. tokens x price is exact; a request's cost is rounded once
  (half to even) from pico- to nano-USD, so it is exact to 1 nano-USD.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

NANO_PER_USD = 10**9
PICO_PER_NANO = 1000
PRICE_PER_USD_PER_M = 10**6  # 1 USD per million tokens = 1e6 pico-USD per token
INT64_MAX = 2**63 - 1  # the database columns are signed 64-bit


class MoneyError(ValueError):
    pass


def _decimal(text: str | int | float | Decimal, what: str) -> Decimal:
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise MoneyError(f"{what} must be a decimal number, got {text!r}") from None
    if not value.is_finite():
        raise MoneyError(f"{what} must be finite")
    return value


def _scaled(text: str | int | Decimal, scale: int, what: str, places: str) -> int:
    """text x scale as an exact integer: never rounded, never beyond a signed 64-bit column."""
    with localcontext() as ctx:
        ctx.prec = 200  # exact for anything that can fit, so nothing is rounded on the way
        value = _decimal(text, what) * scale
        if value != value.to_integral_value():
            raise MoneyError(f"{what} has more than {places}")
    if abs(value) > INT64_MAX:
        raise MoneyError(f"{what} is too large")
    return int(value)


def usd_to_nano(text: str | int | Decimal, what: str = "amount") -> int:
    """'12.50' -> 12_500_000_000. Refuses anything finer than 1 nano-USD rather than round it."""
    return _scaled(text, NANO_PER_USD, what, "9 decimal places")


def usd_per_m_to_price(text: str | int | Decimal, what: str = "price") -> int:
    """USD per million tokens -> pico-USD per token ('0.30' -> 300_000)."""
    if _decimal(text, what) < 0:
        raise MoneyError(f"{what} cannot be negative")
    return _scaled(text, PRICE_PER_USD_PER_M, what, "6 decimal places (USD per million tokens)")


def pico_to_nano(pico: int) -> int:
    """Round once, half to even."""
    return int((Decimal(pico) / PICO_PER_NANO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def rate_to_micro(text: str, what: str = "rate") -> int:
    """A positive exchange rate with at most 6 decimals, as an integer: '7.1234' -> 7_123_400."""
    value = _scaled(text, 10**6, what, "6 decimal places")
    if value <= 0:
        raise MoneyError(f"{what} must be positive")
    return value


def nano_usd_to_cny(nano: int, cny_per_usd_micro: int) -> str:
    """USD (nano) at a rate (micro-CNY per USD) -> CNY, exact to the fen's 1/10,000, as a string."""
    micro_cny = (Decimal(nano) * cny_per_usd_micro / 10**9).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    sign = "-" if micro_cny < 0 else ""
    whole, frac = divmod(abs(int(micro_cny)), 10**6)
    return f"{sign}{whole}.{frac:06d}"


def nano_to_usd(nano: int) -> str:
    """Exact decimal string: 12_500_000_000 -> '12.500000000'."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def price_to_usd_per_m(price: int) -> str:
    whole, frac = divmod(price, PRICE_PER_USD_PER_M)
    return f"{whole}.{frac:06d}"
