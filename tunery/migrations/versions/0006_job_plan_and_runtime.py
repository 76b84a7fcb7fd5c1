"""a job's resolved training plan, the trainer runtime it was queued with, and the last step it reported

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("runtime", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reported_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("reported_step")
        batch_op.drop_column("runtime")
        batch_op.drop_column("plan")
