"""Each pass deletes idempotency answers past 24 hours and old rejected webhooks, nothing newer."""

from datetime import timedelta

from sqlalchemy import func, select

from app.extensions import db
from app.models import IdempotencyRecord, WebhookRejection
from app.models.clock import utcnow

from .support import reconcile


def test_a_pass_prunes_only_expired_records(app):
    now = utcnow()
    with app.app_context():
        db.session.add_all([
            IdempotencyRecord(key="old", scope="initiate-payment", fingerprint="f", status_code=201, response={},
                              created_at=now - timedelta(hours=25)),
            IdempotencyRecord(key="fresh", scope="initiate-payment", fingerprint="f", status_code=201, response={},
                              created_at=now - timedelta(hours=23)),
            WebhookRejection(gateway="sandbox", reason="invalid_signature", received_at=now - timedelta(days=31)),
            WebhookRejection(gateway="sandbox", reason="invalid_signature", received_at=now - timedelta(days=1)),
        ])
        db.session.commit()
    reconcile(app)
    with app.app_context():
        assert db.session.scalars(select(IdempotencyRecord.key)).all() == ["fresh"]
        assert db.session.scalar(select(func.count()).select_from(WebhookRejection)) == 1
