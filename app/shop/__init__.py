"""The shop: catalog and orders (JSON API of contract section 2) and the shopper's pages."""

from flask import Blueprint

bp = Blueprint("shop", __name__)

from app.shop import pages, routes  # noqa: E402,F401  (registers the routes on bp)
