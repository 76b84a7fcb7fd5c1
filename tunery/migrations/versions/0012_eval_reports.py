"""eval reports: the report of each checkpoint and of a job's final model (its file and its summary)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("checkpoints", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("eval_report", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("checkpoints", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("eval_report")
