"""Money as text from integer minor units: the currency's decimals, grouped for people or plain for files."""

import pytest

from app.domain.money import format_minor, format_minor_units


@pytest.mark.parametrize(("amount", "currency", "grouped", "plain"), [
    (123456789, "USD", "1,234,567.89", "1234567.89"),
    (5, "usd", "0.05", "0.05"),
    (1234567, "JPY", "1,234,567", "1234567"),
    (1234567, "KWD", "1,234.567", "1234.567"),
    (-1999, "EUR", "-19.99", "-19.99"),
    (0, "BHD", "0.000", "0.000"),
])
def test_minor_units_become_decimal_text_without_floats(amount, currency, grouped, plain):
    assert format_minor_units(amount, currency) == grouped
    assert format_minor_units(amount, currency, grouped=False) == plain
    assert format_minor(amount, currency) == f"{grouped} {currency.upper()}"


@pytest.mark.parametrize("amount", [19.99, "1999", True, None])
def test_anything_but_an_integer_is_refused(amount):
    with pytest.raises(TypeError):
        format_minor_units(amount, "USD")
