"""scheduler claims: the replica that owns a job's or a file's current phase, and its lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 08:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "files"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
            batch_op.add_column(sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_claimed_by"), ["claimed_by"], unique=False)


def downgrade() -> None:
    for table in ("files", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_claimed_by"))
            batch_op.drop_column("lease_expires_at")
            batch_op.drop_column("claimed_by")
