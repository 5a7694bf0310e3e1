"""Routes of the ops console: thin, each calls one service. Staff only; admins act."""

from __future__ import annotations

import secrets
from datetime import datetime
from functools import wraps

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from app.domain.money import minor_exponent
from app.extensions import login_manager
from app.models.clock import utcnow
from app.ops.export import transactions_csv as transactions_csv_text
from app.ops.forms import FilterForm, RefundForm
from app.ops.reasons import explain
from app.ops.redaction import pretty, pretty_text
from app.services import ops, refunds
from app.services.errors import ServiceError
from app.services.ops import ListFilters

bp = Blueprint("ops", __name__, url_prefix="/ops")


@bp.record
def _register_socket_events(_state) -> None:
    """Attach the ops room's Socket.IO handler whenever the blueprint joins an app."""
    from app.ops.live import register_events

    register_events()


@bp.record_once
def _staff_only(state) -> None:
    """Every /ops address, present and future, is for logged-in staff: others go to /ops/login.

    One app-level check, so it covers addresses that match no page (or not by this method)
    too, rather than telling strangers with a 404 or 405 what exists. The login page itself
    belongs to the auth blueprint.
    """

    @state.app.before_request
    def _staff_only_under_ops():
        under_ops = request.blueprint == bp.name or (
            request.url_rule is None and (request.path == "/ops" or request.path.startswith("/ops/")))
        if under_ops and not current_user.is_authenticated:
            return login_manager.unauthorized()
        return None


def admin_required(view):
    """Refuse the action with 403 unless the staff member is an admin."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403, description="Only ops admins may do this; your account can view but not act.")
        return view(*args, **kwargs)

    return wrapped


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.context_processor
def _helpers() -> dict:
    return {"money": ops.money_text, "when": _when, "pretty": pretty, "pretty_text": pretty_text,
            "minor_exponent": minor_exponent, "flag_version": ops.flag_version}


# -- pages ---------------------------------------------------------------------------------


@bp.get("/")
def index():
    return redirect(url_for("ops.transactions"))


# The contract has every form carry a csrf_token, the filter GET form included. A GET form
# puts it in the URL (history, access logs), so that form carries a token signed over its
# own session value: it looks the same but no POST accepts it.
GET_FORM_TOKEN_KEY = "csrf_token_get_forms"


def _list_filters() -> tuple[FilterForm, ListFilters, dict]:
    """The list's filter form read from the query, its valid filters, and the query to repeat them."""
    form = FilterForm(request.args)
    form.offer_gateways(ops.known_gateways())
    form.validate()
    # Only the filters' own names: the query repeats into url_for(), where a name of its own
    # (endpoint, _external, _anchor, _method...) would fail the page or bend its links.
    fields = {field.name for field in form}
    params = {k: v for k, v in request.args.items() if k in fields and v}
    return form, form.to_filters(), params


@bp.get("/transactions")
def transactions():
    form, filters, params = _list_filters()
    page = ops.list_transactions(filters, after=request.args.get("after"), before=request.args.get("before"))
    return render_template("ops/transactions.html", form=form, page=page, filters=filters, params=params,
                           counts=ops.status_counts(filters), export_limit=ops.EXPORT_LIMIT,
                           get_form_token=generate_csrf(token_key=GET_FORM_TOKEN_KEY))


@bp.get("/transactions.csv")
def transactions_csv():
    """Every transaction the list's filters select (all pages), as a CSV download."""
    _, filters, params = _list_filters()
    try:
        rows = ops.export_rows(filters, actor=current_user.email)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("ops.transactions", **params), code=303)
    name = f"transactions-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.csv"
    return Response(transactions_csv_text(rows), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.get("/transactions/<transaction_id>")
def transaction(transaction_id: str):
    return _detail_page(transaction_id)


@bp.get("/webhooks")
def webhooks():
    deliveries, rejections = ops.webhook_log()
    return render_template("ops/webhooks.html", deliveries=deliveries, rejections=rejections)


def _detail_page(transaction_id: str, *, refund_form: RefundForm | None = None, error: str | None = None,
                 status: int = 200):
    detail = ops.transaction_detail(transaction_id)
    return render_template("ops/transaction.html", d=detail, tx=detail.transaction,
                           reasons=explain(detail.transaction.review_reason) if detail.transaction.needs_review else [],
                           refund_form=refund_form or RefundForm(formdata=None),
                           refund_keys=(secrets.token_urlsafe(16), secrets.token_urlsafe(16)),
                           error=error), status


def _done(transaction_id: str, message: str):
    flash(message, "success")
    return redirect(url_for("ops.transaction", transaction_id=transaction_id), code=303)


def _refused(transaction_id: str, exc: ServiceError, **kwargs):
    if exc.status == 404:
        raise exc
    return _detail_page(transaction_id, error=exc.message, status=exc.status, **kwargs)


# -- admin actions -------------------------------------------------------------------------


def _act(transaction_id: str, action):
    """Run one admin action as the logged-in staff member and show the transaction again."""
    try:
        outcome = action(transaction_id, current_user.email)
    except ServiceError as exc:
        return _refused(transaction_id, exc)
    return _done(transaction_id, outcome.message)


@bp.post("/transactions/<transaction_id>/recheck")
@admin_required
def recheck(transaction_id: str):
    return _act(transaction_id, ops.recheck)


@bp.post("/transactions/<transaction_id>/cancel")
@admin_required
def cancel(transaction_id: str):
    return _act(transaction_id, ops.cancel_payment)


@bp.post("/transactions/<transaction_id>/refund")
@admin_required
def refund(transaction_id: str):
    form = RefundForm()
    if not form.validate():
        message = next(iter(form.amount.errors), "Enter a whole number of minor units above 0.")
        return _detail_page(transaction_id, refund_form=form, error=message, status=422)
    try:
        done = refunds.refund(transaction_id, form.minor_units, current_user.email, form.request_key.data or None)
    except ServiceError as exc:
        if exc.code == "refund_exceeds_remaining":  # about the amount typed: tie it to that field
            form.amount.errors = [*form.amount.errors, exc.message]
            return _refused(transaction_id, exc, refund_form=form)
        # Any other answer is about a refund this form already asked for (held, failed, in
        # flight): the page comes back with the field empty, so pressing Refund again cannot
        # send a second refund of the same amount under a fresh key; Retry is the way on.
        return _refused(transaction_id, exc)
    return _done(transaction_id, f"Refunded {ops.money_text(done.amount, done.currency)}.")


@bp.post("/transactions/<transaction_id>/review")
@admin_required
def review(transaction_id: str):
    # the flag the page showed (its reasons and when last raised), so a newer one is not cleared unseen
    seen, version = request.form.get("reason", "")[:200], request.form.get("flagged_at")
    version = None if version is None else version[:40]  # a form without it is checked by reason only
    return _act(transaction_id, lambda tx_id, actor: ops.mark_reviewed(tx_id, actor, seen, version))


@bp.post("/transactions/<transaction_id>/refunds/<refund_id>/retry")
@admin_required
def retry_refund(transaction_id: str, refund_id: str):
    try:
        done = refunds.retry_refund(transaction_id, refund_id, current_user.email)
    except ServiceError as exc:
        return _refused(transaction_id, exc)
    return _done(transaction_id, f"Refunded {ops.money_text(done.amount, done.currency)}.")
