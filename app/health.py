"""Liveness, readiness, metrics and the API description: /healthz, /readyz, /metrics, /openapi.json."""

from __future__ import annotations

import logging
from functools import lru_cache

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import func, inspect, select, text

from app import metrics
from app.domain.status import Status
from app.extensions import db
from app.jobs import claims
from app.models import Order, Transaction
from app.models.clock import utcnow
from app.openapi import SPEC
from app.services.fulfillment import awaiting_fulfillment

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and answering."""
    return jsonify({"status": "ok"})


def _check_database() -> str | None:
    """None when the database answers and holds this code's schema: at this code's newest
    migration, or at one this code does not know (a newer release migrated first, as deploys
    do: migrations only add), or, without migrations, with every table."""
    try:
        connection = db.session.connection()
        connection.execute(text("SELECT 1"))
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" in tables:
            at = set(connection.scalars(text("SELECT version_num FROM alembic_version")))
            heads, known = _migrations()
            if at <= known and at != heads:
                return f"schema at {', '.join(sorted(at)) or 'no migration'}, this code needs " \
                       f"{', '.join(sorted(heads))}: run flask --app wsgi db upgrade"
        missing = set(db.metadata.tables) - tables
        if missing:
            return f"{len(missing)} table(s) missing: run flask --app wsgi db upgrade"
        return None
    except Exception as exc:  # any driver error means "not ready"
        return type(exc).__name__
    finally:
        db.session.rollback()  # no transaction left open by a probe, failed or not


@lru_cache(maxsize=1)
def _migrations() -> tuple[frozenset[str], frozenset[str]]:
    """The newest migration(s) this code ships, and every one it knows; read once."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(current_app.extensions["migrate"].directory)
    return frozenset(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


def _check_redis(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any client error means "not ready"
        return type(exc).__name__


@bp.get("/readyz")
def readyz():
    """503 unless the database answers with this code's schema. Redis (when configured) failing
    is "degraded", still 200: checkout goes on without it (rate limits in memory, pages poll),
    and a probe that failed every instance at once would take the whole shop down."""
    checks = {"database": _check_database()}
    if current_app.config.get("REDIS_URL"):
        checks["redis"] = _check_redis(current_app.config["REDIS_URL"])
    failing = {name: error for name, error in checks.items() if error}
    body = {"status": "unavailable" if "database" in failing else "degraded" if failing else "ready",
            "checks": {name: ("ok" if not error else f"failing: {error}") for name, error in checks.items()}}
    if failing:
        log.warning("not ready: %s", failing)
    if "database" in failing:
        return jsonify({**body, "error": "not_ready", "message": "The database is not answering, or its schema "
                        "is not this release's."}), 503
    return jsonify(body)


def _state_counts() -> dict[str, int]:
    """The figures of metrics.STATE_GAUGES; none when the database is not answering (a scrape
    must not fail because of it: the gauges then say -1)."""
    pending = Transaction.status == Status.PENDING.value
    counts = {
        "checkout_pending_transactions": select(func.count()).select_from(Transaction).where(pending),
        "checkout_overdue_pending_transactions": select(func.count()).select_from(Transaction).where(
            *claims.due_for_expiry(claims.overdue_at(utcnow()))),
        "checkout_transactions_needing_review": select(func.count()).select_from(Transaction).where(
            Transaction.needs_review.is_(True)),
        "checkout_orders_awaiting_fulfillment": select(func.count()).select_from(Order).where(
            *awaiting_fulfillment()),
    }
    try:
        found = {name: db.session.scalar(query) or 0 for name, query in counts.items()}
    except Exception as exc:
        log.warning("metrics: the database did not answer the state counts (%s)", type(exc).__name__)
        db.session.rollback()
        return {}
    db.session.rollback()  # read only
    return found


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus exposition format."""
    body, content_type = metrics.render(_state_counts, current_app.config.get("PROMETHEUS_MULTIPROC_DIR"))
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of the JSON API."""
    return jsonify(SPEC)
