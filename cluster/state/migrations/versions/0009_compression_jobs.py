"""compression jobs (spec §6.2), and the quantization a model version was compressed with

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compression_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("model_ref", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(16), nullable=True),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("source_path", sa.String(1024), nullable=False),
        sa.Column("dataset_path", sa.String(1024), nullable=True),
        sa.Column("dataset_format", sa.String(16), nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("output_model", sa.String(64), nullable=False),
        sa.Column("output_dir", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(4000), nullable=False),
        sa.Column("submission_id", sa.String(64), nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("result_version", sa.String(32), nullable=False),
        sa.Column("auto_stop_s", sa.Integer, nullable=True),
        sa.Column("running_since", sa.Integer, nullable=True),
        sa.Column("run_seconds", sa.Integer, nullable=False, server_default="0"),
        sa.Column("notify_url", sa.String(1024), nullable=True),
        sa.Column("notify_events", sa.JSON, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("quantization", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("quantization")
    op.drop_table("compression_jobs")
