"""Test cards of the hosted page (contract 4a): validation and the outcome each one gives.

Pure Python. Only ``CardCheck.last4`` ever leaves this module; the full number is not
kept anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

# What a card does once the form is accepted.
APPROVE = "approve"
DECLINE = "decline"
CONFIRM = "confirm"  # an extra confirmation page (3-D-Secure-like)
SETTLE_LATER = "settle_later"  # pending for a while, then success

TEST_CARDS = {
    "4242424242424242": APPROVE,
    "4000000000000002": DECLINE,
    "4000000000003220": CONFIRM,
    "4000000000000077": SETTLE_LATER,
}

_EXPIRY = re.compile(r"^\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*$")


def normalize_number(raw: str) -> str:
    """The card number without spaces or dashes ('' when anything else is in it)."""
    compact = re.sub(r"[\s-]", "", raw or "")
    return compact if compact.isascii() and compact.isdigit() else ""  # "²".isdigit() is True


def passes_luhn(number: str) -> bool:
    """True when ``number`` (digits only) passes the Luhn checksum."""
    if not (number.isascii() and number.isdigit()):
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def expiry_error(raw: str, today: date) -> str | None:
    """Why the ``MM/YY`` expiry is refused, or None; a card is valid through its month."""
    match = _EXPIRY.match(raw or "")
    if not match:
        return "Enter the expiry date as MM/YY."
    month, year = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        return "The expiry month must be between 01 and 12."
    year = year if year >= 100 else 2000 + year
    if (year, month) < (today.year, today.month):
        return "This card has expired."
    return None


@dataclass(frozen=True)
class CardCheck:
    """The verdict on a submitted card form: errors by field, or an outcome."""

    errors: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None
    last4: str | None = None

    @property
    def ok(self) -> bool:
        """True when the card was accepted (the outcome may still be a decline)."""
        return not self.errors


def check_card(card_number: str, expiry: str, cvc: str, today: date) -> CardCheck:
    """Validate the form fields; an accepted card gets its test outcome (others approve)."""
    errors: dict[str, str] = {}
    number = normalize_number(card_number)
    if not number or not 12 <= len(number) <= 19:
        errors["card_number"] = "Enter a card number of 12 to 19 digits."
    elif not passes_luhn(number):
        errors["card_number"] = "This card number is not valid."
    problem = expiry_error(expiry, today)
    if problem:
        errors["expiry"] = problem
    if not re.fullmatch(r"\d{3,4}", (cvc or "").strip()):
        errors["cvc"] = "Enter the 3-digit security code."
    if errors:
        return CardCheck(errors=errors)
    return CardCheck(outcome=TEST_CARDS.get(number, APPROVE), last4=number[-4:])
