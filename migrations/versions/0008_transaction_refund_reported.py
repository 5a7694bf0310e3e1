"""transactions remember a refund the gateway reported before their success was applied

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("transactions", sa.Column("refund_reported", sa.String(24), nullable=True))


def downgrade():
    # In place, as 0007: a batch rebuild fails on SQLite's foreign keys once rows exist.
    op.drop_column("transactions", "refund_reported")
