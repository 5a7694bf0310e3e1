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
    op.create_index("ix_transactions_created_at_id", "transactions", ["created_at", "id"])
    op.create_index("ix_transactions_needs_review", "transactions", ["needs_review"])


def downgrade():
    op.drop_index("ix_transactions_needs_review", table_name="transactions")
    op.drop_index("ix_transactions_created_at_id", table_name="transactions")
