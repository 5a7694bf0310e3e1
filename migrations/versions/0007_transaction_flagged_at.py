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
    with op.batch_alter_table("transactions") as batch:
        batch.drop_column("flagged_at")
