"""transactions remember when a review reason was last raised, so a review clears only what it saw

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("transactions", sa.Column("flagged_at", sa.DateTime(), nullable=True))


def downgrade():
    # In place (SQLite 3.35+ drops a column itself): a batch rebuild would drop the referenced
    # table, which SQLite's foreign keys refuse once refunds or timeline lines exist.
    op.drop_column("transactions", "flagged_at")
