"""usage_records.calls: how many calls a row stands for. Repeated refusals of one key (same status and code)
within a minute fold into one row after the first few (cluster.accounting.refusals), so a loop of refused
calls cannot grow the table without bound; statistics sum `calls`.

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("calls", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("calls")
