"""64-bit ids of usage records and service events, and 64-bit limits and quotas (PostgreSQL)

PostgreSQL's INTEGER is 32-bit: usage_records.id would overflow after 2**31 calls, and an endpoint TPM or a
free token quota above 2,147,483,647 was refused by the database. SQLite's INTEGER is already 64-bit (and
only INTEGER PRIMARY KEY auto-increments there), so this migration changes nothing on SQLite.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = {
    "usage_records": ["id"],
    "service_events": ["id"],
    "endpoints": ["rpm", "tpm"],
    "presets": ["free_quota_tokens", "rpm", "tpm"],
}
SERIALS = ["usage_records", "service_events"]  # their id's sequence must grow past 2**31 as well


def _change(to: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger() if to == "bigint" else sa.Integer(),
                            existing_type=sa.Integer() if to == "bigint" else sa.BigInteger())
    for table in SERIALS:
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS {to}")


def upgrade() -> None:
    _change("bigint")


def downgrade() -> None:
    _change("integer")
