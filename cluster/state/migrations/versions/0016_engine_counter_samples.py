"""engine_counter_samples: the engines' own token counters over time (what `maas usage audit` compares the
ledger with), kept in SQL so that an accounting actor's restart does not lose the baselines of a range

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "engine_counter_samples",
        sa.Column("id", big, primary_key=True, autoincrement=True),
        sa.Column("replica", sa.String(128), nullable=False),
        sa.Column("app_name", sa.String(128), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", big, nullable=False),
        sa.Column("generation_tokens", big, nullable=False),
    )
    op.create_index("ix_engine_samples_at", "engine_counter_samples", ["at"])


def downgrade() -> None:
    op.drop_index("ix_engine_samples_at", "engine_counter_samples")
    op.drop_table("engine_counter_samples")
