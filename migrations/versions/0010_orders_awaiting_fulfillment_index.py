"""a partial index on the paid orders, in reconciliation's order, for its fulfillment retries each pass

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PAID = sa.text("status = 'paid'")


def upgrade():
    # Partial: a paid order is fulfilled moments later, so the index holds a handful of rows
    # where the whole table, without it, was read every pass. CONCURRENTLY: see 0002.
    with op.get_context().autocommit_block():
        op.create_index("ix_orders_awaiting_fulfillment", "orders", ["fulfillment_attempts", "paid_at"],
                        postgresql_where=PAID, sqlite_where=PAID, postgresql_concurrently=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_orders_awaiting_fulfillment", table_name="orders", postgresql_concurrently=True)
