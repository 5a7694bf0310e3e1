"""refunds remember when their unknown outcome was flagged for ops, and when they were retried

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("refunds", sa.Column("flagged_at", sa.DateTime(), nullable=True))
    op.add_column("refunds", sa.Column("retried_at", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("retried_at")
        batch.drop_column("flagged_at")
