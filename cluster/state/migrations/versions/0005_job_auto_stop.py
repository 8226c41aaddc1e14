"""tuning jobs: auto-stop on running time, event notification

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuning_jobs") as batch:
        batch.add_column(sa.Column("auto_stop_s", sa.Integer, nullable=True))
        batch.add_column(sa.Column("running_since", sa.Integer, nullable=True))
        batch.add_column(sa.Column("run_seconds", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("notify_url", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("notify_events", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tuning_jobs") as batch:
        for column in ("notify_events", "notify_url", "run_seconds", "running_since", "auto_stop_s"):
            batch.drop_column(column)
