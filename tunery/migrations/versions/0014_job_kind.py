"""job kinds: a job's ``kind`` (fine_tune, or evaluation: an on-demand eval report of an ft: model, docs/evals.md)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Every job stored before this revision is a fine-tuning job.
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="fine_tune"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("kind")
