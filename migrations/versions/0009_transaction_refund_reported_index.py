"""a partial index on transactions.refund_reported, for reconciliation's look each pass

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

WAITING = sa.text("refund_reported IS NOT NULL")


def upgrade():
    # Partial: only the few payments with a refund remembered are in it. CONCURRENTLY: see 0002.
    with op.get_context().autocommit_block():
        op.create_index("ix_transactions_refund_reported", "transactions", ["refund_reported"],
                        postgresql_where=WAITING, sqlite_where=WAITING, postgresql_concurrently=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_transactions_refund_reported", table_name="transactions", postgresql_concurrently=True)
