"""project secrets: the secrets a project's jobs' integrations read (a W&B API key, MLflow credentials)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "project_secrets",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("project_id", "name", name="uq_project_secrets_project_id_name"),
    )
    with op.batch_alter_table("project_secrets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_project_secrets_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_project_secrets_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_table("project_secrets")
