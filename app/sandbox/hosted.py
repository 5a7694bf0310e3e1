"""The hosted payment page (the ``payment_url``): card form, confirmation step, cancel.

Only the last four digits of a card go further than ``cards.check_card``; the number and
CVC are never stored, logged or echoed back into the page.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

from app.sandbox import cards, payments
from app.sandbox.form_tokens import issue_token, token_is_valid
from app.sandbox.models import PENDING, STEP_CONFIRM, STEP_PROCESSING, PaymentSession

log = logging.getLogger(__name__)

bp = Blueprint("sandbox_pay", __name__)

TEST_CARDS = [
    ("4242 4242 4242 4242", "succeeds"),
    ("4000 0000 0000 0002", "is declined"),
    ("4000 0000 0000 3220", "asks for a confirmation step"),
    ("4000 0000 0000 0077", "stays pending for a while, then succeeds"),
]


def _runtime():
    return current_app.extensions["sandbox"]


def _token(session_id: str) -> str:
    return issue_token(_runtime().settings["SANDBOX_FORM_SECRET"], f"pay:{session_id}")


def _check_token(session_id: str) -> None:
    secret = _runtime().settings["SANDBOX_FORM_SECRET"]
    if not token_is_valid(secret, f"pay:{session_id}", request.form.get("csrf_token")):
        log.warning("sandbox hosted page for session %s: missing or invalid CSRF token", session_id)
        abort(400, description="The form has expired or was not sent from this page. Reload it and try again.")


def _session_or_404(session_id: str) -> PaymentSession:
    session = payments.find_session(_runtime(), session_id=session_id)
    if session is None:
        abort(404, description="This payment link is not valid.")
    return session


STATE_MESSAGES = {
    "success": ("ok", "Payment complete", "This payment has already been made. Thank you!"),
    "partially_refunded": ("ok", "Payment complete", "This payment was made and partly refunded."),
    "refunded": ("ok", "Payment refunded", "This payment was made and then refunded."),
    "failure": ("bad", "Payment failed", "This payment was declined. Go back to the shop to try again."),
    "expired": ("bad", "Payment link expired", "This payment session has expired. Go back to the shop to start again."),
    "cancelled": ("bad", "Payment cancelled", "This payment was cancelled."),
}
PROCESSING_MESSAGE = (
    "", "Payment processing",
    "Your payment was accepted and is being processed. The shop will show it once it completes.",
)


def _state_page(session: PaymentSession, status_code: int = 200):
    """The page for a session that takes no card: processing, paid, failed, expired, cancelled."""
    if session.status == PENDING and session.step == STEP_PROCESSING:
        tone, heading, text = PROCESSING_MESSAGE
    else:
        tone, heading, text = STATE_MESSAGES.get(session.status, ("", f"Payment {session.status}", ""))
    back_url = session.cancel_url if session.status == "cancelled" else session.return_url
    return render_template(
        "state.html", session=session, tone=tone, heading=heading, text=text, back_url=back_url
    ), status_code


def _pay_page(session: PaymentSession, errors: dict | None = None, status_code: int = 200):
    values = {"name": request.form.get("name", ""), "expiry": request.form.get("expiry", "")} if errors else {}
    return render_template(
        "pay.html", session=session, errors=errors or {}, values=values,
        csrf_token=_token(session.session_id), test_cards=TEST_CARDS,
    ), status_code


def _is_open(session: PaymentSession) -> bool:
    return session.status == PENDING and session.step is None


@bp.get("/pay/<session_id>")
def pay_page(session_id: str):
    """The card form while the session is open, otherwise a page saying where it stands."""
    session = _session_or_404(session_id)
    if session.status == PENDING and session.step == STEP_CONFIRM:
        return redirect(url_for(".confirm_page", session_id=session_id), 303)
    return _pay_page(session) if _is_open(session) else _state_page(session)


@bp.post("/pay/<session_id>")
def pay(session_id: str):
    """Take the card: refuse bad input on the page, else apply the test card's outcome."""
    _check_token(session_id)
    session = _session_or_404(session_id)
    if not _is_open(session):
        return _state_page(session, 409)
    check = cards.check_card(
        request.form.get("card_number", ""), request.form.get("expiry", ""),
        request.form.get("cvc", ""), datetime.now(UTC).date(),
    )
    if not check.ok:
        refused = ", ".join(sorted(check.errors))
        log.info("sandbox transaction %s card form refused: %s", session.transaction_id, refused)
        return _pay_page(session, check.errors, 422)
    updated = payments.submit_card(_runtime(), session, check)
    if updated is None:
        return _state_page(payments.find_session(_runtime(), session_id=session_id), 409)
    if check.outcome == cards.CONFIRM:
        return redirect(url_for(".confirm_page", session_id=session_id), 303)
    return redirect(session.return_url, 303)


@bp.get("/pay/<session_id>/confirm")
def confirm_page(session_id: str):
    """The extra confirmation step of the 3220 card, with Complete and Fail."""
    session = _session_or_404(session_id)
    if not (session.status == PENDING and session.step == STEP_CONFIRM):
        return redirect(url_for(".pay_page", session_id=session_id), 303)
    return render_template("confirm.html", session=session, csrf_token=_token(session_id))


@bp.post("/pay/<session_id>/confirm")
def confirm(session_id: str):
    """Complete → success, Fail → failure; then back to the merchant's return_url."""
    _check_token(session_id)
    action = request.form.get("action")
    if action not in ("complete", "fail"):
        abort(400, description="Choose Complete or Fail.")
    session = _session_or_404(session_id)
    if payments.confirm(_runtime(), session, complete=action == "complete") is None:
        return _state_page(payments.find_session(_runtime(), session_id=session_id), 409)
    return redirect(session.return_url, 303)


@bp.post("/pay/<session_id>/cancel")
def cancel(session_id: str):
    """The shopper gives up: the session is cancelled and they go back to cancel_url."""
    _check_token(session_id)
    session = _session_or_404(session_id)
    if _is_open(session) or (session.status == PENDING and session.step == STEP_CONFIRM):
        session = payments.cancel(_runtime(), session) or payments.find_session(_runtime(), session_id=session_id)
    if session.status in ("cancelled", "expired", "failure"):
        log.info("sandbox transaction %s: shopper returned to cancel_url", session.transaction_id)
        return redirect(session.cancel_url, 303)
    return _state_page(session, 409)
