"""services: autoscaling (policy, min/max instances, policy options, engine batch size, the last decision)

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("autoscale", sa.String(16), nullable=False, server_default="off"))
        batch.add_column(sa.Column("min_instances", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_instances", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("autoscale_options", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("max_batch", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("last_scaling", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        for column in ("last_scaling", "max_batch", "autoscale_options", "max_instances", "min_instances",
                       "autoscale"):
            batch.drop_column(column)
