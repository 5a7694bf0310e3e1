"""The payment API of contract section 3 and the shopper's payment pages."""

from flask import Blueprint

bp = Blueprint("payments", __name__)

from app.payments import pages, routes  # noqa: E402,F401
