"""refunds carry the one-time key of the form that asked for them, so a form sent twice refunds once

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("refunds", sa.Column("request_key", sa.String(64), nullable=True))
    op.create_index("uq_refunds_request_key", "refunds", ["request_key"], unique=True)


def downgrade():
    op.drop_index("uq_refunds_request_key", table_name="refunds")
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("request_key")
