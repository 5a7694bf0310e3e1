"""Money as integer minor units plus an ISO 4217 code; never a float."""

from __future__ import annotations

# ISO 4217 minor-unit exponents that are not 2 (every other currency has two decimals).
EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}


# The money columns are 32-bit integers: no amount, line or total may exceed this.
MAX_MINOR_UNITS = 2**31 - 1


def minor_exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has: 2 for USD, 0 for JPY, 3 for KWD."""
    return EXPONENTS.get(currency.upper(), 2)


def format_minor_units(amount: int, currency: str, *, grouped: bool = True) -> str:
    """``1999, "USD"`` -> ``"19.99"``; integer arithmetic only, thousands separated unless not
    ``grouped`` (``123456, "USD"`` -> ``"1,234.56"`` or ``"1234.56"``, the form files want)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("money amounts are integers of minor units")
    exponent = minor_exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    whole = f"{major:,}" if grouped else str(major)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{minor:0{exponent}d}"


def format_minor(amount: int, currency: str) -> str:
    """``format_minor(1999, "USD") == "19.99 USD"``."""
    return f"{format_minor_units(amount, currency)} {currency.upper()}"
