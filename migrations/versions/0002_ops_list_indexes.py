"""indexes for the ops transaction list: keyset order and the flagged filter

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # CONCURRENTLY on PostgreSQL: payments and webhooks keep writing the table while it builds
    # (a plain CREATE INDEX blocks every write until it is done). SQLite ignores it.
    with op.get_context().autocommit_block():
        op.create_index("ix_transactions_created_at_id", "transactions", ["created_at", "id"],
                        postgresql_concurrently=True)
        op.create_index("ix_transactions_needs_review", "transactions", ["needs_review"],
                        postgresql_concurrently=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_transactions_needs_review", table_name="transactions", postgresql_concurrently=True)
        op.drop_index("ix_transactions_created_at_id", table_name="transactions", postgresql_concurrently=True)
