"""transactions remember what we asked the gateway to close their session as

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("transactions", sa.Column("closing_as", sa.String(24), nullable=True))


def downgrade():
    # In place (SQLite 3.35+ drops a column itself): a batch rebuild would drop the referenced
    # table, which SQLite's foreign keys refuse once refunds or timeline lines exist.
    op.drop_column("transactions", "closing_as")
