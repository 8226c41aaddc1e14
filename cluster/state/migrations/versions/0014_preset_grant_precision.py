"""preset_grants: `granted` (false for a row an admin's freeze created for a project that never activated or
claimed: after the unfreeze that project has still not activated) and `created_at` as float seconds (the free
quota counts the calls started after the claim; whole seconds counted the calls of the claim's second before it)

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("preset_grants") as batch:
        batch.add_column(sa.Column("granted", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.alter_column("created_at", type_=sa.Float(), existing_type=sa.Integer(),
                           postgresql_using="created_at::double precision")


def downgrade() -> None:
    with op.batch_alter_table("preset_grants") as batch:
        batch.alter_column("created_at", type_=sa.Integer(), existing_type=sa.Float(),
                           postgresql_using="floor(created_at)::integer")
        batch.drop_column("granted")
