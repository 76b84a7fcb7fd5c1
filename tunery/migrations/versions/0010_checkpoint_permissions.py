"""checkpoint permissions: a fine-tuned or checkpoint model shared with another project

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 13:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=512), nullable=False),
        sa.Column("grantee_project_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("model_id", "grantee_project_id", name="uq_checkpoint_permissions_grantee"),
    )
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_checkpoint_permissions_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_checkpoint_permissions_grantee_project_id"), ["grantee_project_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("checkpoint_permissions")
