"""The shopper's payment pages: Pay, the live waiting page, Cancel, and the status lookup.

The waiting page shows the payment as it stands when rendered; static/js/payment.js then
follows it live over Socket.IO (contract section 5), polling /check-payment-status every 5 s
when the socket cannot connect.
"""

from __future__ import annotations

import logging

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for

from app.domain.status import Status
from app.extensions import initiate_limit, limiter, socketio
from app.http import wants_json
from app.payments import bp
from app.services import checkout
from app.services.errors import ServiceError
from app.services.payments import get_transaction
from app.shop.pages import holds_order, remember_order

log = logging.getLogger(__name__)

# How long the page waits for the return check before it renders "pending" and lets the
# check finish in the background (its result then arrives over the socket).
RETURN_CHECK_WAIT_SECONDS = 2.0
POLL_SECONDS = 5
LOOKUP_REFUSED = "We could not find a payment for that order number and access code. Check both and try again."

SCREENS = {
    "pending": "pending",
    "success": "success",
    "failure": "failure",
    "expired": "expired",
    "cancelled": "cancelled",
    "refunded": "refunded",
    "partially_refunded": "refunded",
}
STATUS_TEXT = {
    "pending": "Waiting for your payment. This page updates by itself.",
    "success": "Payment received. Thank you!",
    "failure": "The payment did not go through.",
    "expired": "The payment expired before it was completed.",
    "cancelled": "The payment was cancelled.",
    "refunded": "This payment was refunded.",
    "partially_refunded": "This payment was partly refunded.",
}
STATUS_LABEL = {
    "pending": "Waiting for payment",
    "success": "Paid",
    "failure": "Failed",
    "expired": "Expired",
    "cancelled": "Cancelled",
    "refunded": "Refunded",
    "partially_refunded": "Partly refunded",
}


@bp.post("/checkout/<order_id>/pay")
@initiate_limit
def pay(order_id: str):
    """Start or reuse the order's payment; go to the gateway (JSON for the page script)."""
    try:
        started = checkout.start_payment(order_id)
    except ServiceError as exc:
        if wants_json() or exc.status == 404:
            raise
        flash(exc.message, "error")
        return redirect(url_for("shop.checkout_page", order_id=order_id), 303)
    page_url = url_for("payments.payment_page", transaction_id=started["transaction_id"])
    if wants_json():
        return jsonify({"transaction_id": started["transaction_id"], "payment_url": started["payment_url"],
                        "page_url": page_url})
    return redirect(started["payment_url"], 303)


def _check_returning_shopper(transaction_id: str) -> None:
    """Ask the gateway once (rate-limited) as the shopper comes back, waiting a bounded time."""
    app = current_app._get_current_object()

    def run() -> None:
        with app.app_context():
            try:
                checkout.check_on_return(transaction_id)
            except Exception:  # the page must render whatever the check does
                log.exception("txn=%s return check failed", transaction_id)

    socketio.start_background_task(run).join(RETURN_CHECK_WAIT_SECONDS)


@bp.get("/payment/<transaction_id>")
def payment_page(transaction_id: str):
    tx = get_transaction(transaction_id)
    returned = "returned" in request.args or "cancelled" in request.args
    if returned and tx.status == Status.PENDING.value:
        tx = checkout.payment_after_return_check(transaction_id, _check_returning_shopper)
    order = tx.order
    held = holds_order(order.id)
    return render_template(
        "payments/payment.html", tx=tx, order=order, screen=SCREENS.get(tx.status, "pending"),
        status_text=STATUS_TEXT, status_label=STATUS_LABEL, screens=SCREENS, poll_seconds=POLL_SECONDS,
        check_seconds=current_app.config["PAYMENT_PAGE_CHECK_SECONDS"],
        left_at_gateway="cancelled" in request.args, can_cancel=held,
        access_code=checkout.display_access_code(order.access_code) if held else None,
    )


@bp.post("/payment/<transaction_id>/cancel")
def cancel(transaction_id: str):
    """Cancel the pending payment and go back to the order (or show why it was not cancelled).

    Only a browser that holds the order (placed it, or looked it up with its access code) may
    cancel: the transaction id alone is what anyone with the order number can obtain.
    """
    tx = get_transaction(transaction_id)
    if not holds_order(tx.order_id):
        raise ServiceError(403, "not_your_order", "Only the browser that placed this order can cancel its payment. "
                           "Look the payment up with your order number and access code first.")
    try:
        status = checkout.cancel_payment(tx.id)
    except ServiceError as exc:
        if exc.status == 404:
            raise
        flash(exc.message, "error")
        return redirect(url_for("payments.payment_page", transaction_id=transaction_id), 303)
    if status in (Status.CANCELLED, Status.EXPIRED):
        # Expired: the payment's time ran out before the cancel reached it. Nothing was charged
        # either way, and the page says what was recorded.
        flash("Your payment was cancelled and nothing was charged. You can pay again when you are ready."
              if status == Status.CANCELLED else "Your payment had already expired, so nothing was charged. "
              "You can pay again when you are ready.", "ok")
        return redirect(url_for("shop.checkout_page", order_id=tx.order_id), 303)
    if status == Status.SUCCESS:
        flash("Your payment had already gone through, so it was not cancelled.", "ok")
    return redirect(url_for("payments.payment_page", transaction_id=transaction_id), 303)


@bp.route("/payment-status", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOOKUP"], methods=["POST"])  # per client address
def payment_status_page():
    """Look a payment up by order number and access code (for a shopper who closed the page)."""
    if request.method == "GET":
        return render_template("payments/lookup.html", found=None, error=None, order_id="",
                               status_label=STATUS_LABEL)
    order_id = request.form.get("order_id", "").strip()[:64]
    found = checkout.find_payment(order_id, request.form.get("access_code", "")[:64])
    if found is None:
        return render_template("payments/lookup.html", found=None, error=LOOKUP_REFUSED, order_id=order_id,
                               status_label=STATUS_LABEL), 404
    remember_order(found.order.id)
    return render_template("payments/lookup.html", found=found, error=None, order_id=found.order.id,
                           status_text=STATUS_TEXT, status_label=STATUS_LABEL)
