"""The card rules of the hosted page, without Flask or storage."""

from __future__ import annotations

from datetime import date

import pytest

from app.sandbox import cards
from app.domain.money import format_minor_units

TODAY = date(2030, 6, 15)


@pytest.mark.parametrize(
    ("number", "outcome"),
    [
        ("4242 4242 4242 4242", cards.APPROVE),
        ("4000 0000 0000 0002", cards.DECLINE),
        ("4000000000003220", cards.CONFIRM),
        ("4000-0000-0000-0077", cards.SETTLE_LATER),
        ("5555 5555 5555 4444", cards.APPROVE),  # any other valid number is approved
    ],
)
def test_test_cards_map_to_their_outcome(number, outcome):
    check = cards.check_card(number, "12/30", "123", TODAY)
    assert check.ok and check.outcome == outcome
    assert check.last4 == number.replace(" ", "").replace("-", "")[-4:]


@pytest.mark.parametrize("number", ["4242 4242 4242 4241", "4000000000000001", "1234567812345678"])
def test_luhn_failures_are_refused(number):
    check = cards.check_card(number, "12/30", "123", TODAY)
    assert not check.ok and check.errors["card_number"] == "This card number is not valid."
    assert check.last4 is None and check.outcome is None


@pytest.mark.parametrize("number", ["", "4242", "4242x4242x4242x4242", "4" * 20])
def test_malformed_numbers_are_refused(number):
    assert "card_number" in cards.check_card(number, "12/30", "123", TODAY).errors


@pytest.mark.parametrize(
    ("expiry", "accepted"),
    [("06/30", True), ("6/30", True), ("12/2031", True), ("05/30", False), ("01/29", False),
     ("13/30", False), ("00/31", False), ("1230", False), ("", False), ("aa/bb", False)],
)
def test_expiry_must_be_mm_yy_and_not_past(expiry, accepted):
    assert ("expiry" not in cards.check_card("4242424242424242", expiry, "123", TODAY).errors) is accepted


@pytest.mark.parametrize(
    ("cvc", "accepted"), [("123", True), ("1234", True), ("12", False), ("abc", False), ("", False)]
)
def test_cvc_must_be_three_digits(cvc, accepted):
    assert ("cvc" not in cards.check_card("4242424242424242", "12/30", cvc, TODAY).errors) is accepted


def test_luhn_checksum():
    assert cards.passes_luhn("79927398713")
    assert not cards.passes_luhn("79927398710")
    assert not cards.passes_luhn("")


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(1999, "USD", "19.99"), (5, "EUR", "0.05"), (123456789, "GBP", "1,234,567.89"),
     (1500, "JPY", "1,500"), (12345, "KWD", "12.345")],
)
def test_minor_units_are_formatted_without_floats(amount, currency, shown):
    assert format_minor_units(amount, currency) == shown
