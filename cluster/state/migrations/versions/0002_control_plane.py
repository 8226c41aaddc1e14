"""services, service events, custom endpoints, presets and grants, usage records

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("qps", sa.Integer, nullable=True),
        sa.Column("moderation", sa.Boolean, nullable=False),
        sa.Column("auto_stop_s", sa.Integer, nullable=True),
        sa.Column("notify_url", sa.String(1024), nullable=True),
        sa.Column("notify_events", sa.JSON, nullable=False),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("app_name", sa.String(128), nullable=False),
        sa.Column("running_since", sa.Integer, nullable=True),
        sa.Column("run_seconds", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_table(
        "service_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(32), nullable=False, index=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Integer, nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.String(1024), nullable=False),
        sa.Column("notified", sa.Boolean, nullable=False),
    )
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("rpm", sa.Integer, nullable=False),
        sa.Column("tpm", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("deleted_at", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_table(
        "presets",
        sa.Column("model_id", sa.String(128), sa.ForeignKey("served_models.model_id"), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.Integer, nullable=True),
        sa.Column("free_quota_tokens", sa.Integer, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=False),
        sa.Column("tpm", sa.Integer, nullable=False),
    )
    op.create_table(
        "preset_grants",
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("model_id", sa.String(128), sa.ForeignKey("presets.model_id"), primary_key=True),
        sa.Column("frozen", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("service_type", sa.String(16), nullable=False),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("endpoint_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("tpot_ms", sa.Float, nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
    )
    op.create_index("ix_usage_project_ts", "usage_records", ["project_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_usage_project_ts", "usage_records")
    for table in ("usage_records", "preset_grants", "presets", "endpoints", "service_events", "services"):
        op.drop_table(table)
