"""model aliases: a project's stable names for its models, and every version of each (who re-pointed it, when)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_model_aliases_project_name"),
    )
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_aliases_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_aliases_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_aliases_model"), ["model"], unique=False)
    op.create_table(
        "model_alias_versions",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("alias_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_model", sa.String(length=512), nullable=True),
        sa.Column("to_model", sa.String(length=512), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.Column("actor_service_account_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["alias_id"], ["model_aliases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("alias_id", "version", name="uq_model_alias_versions_alias_version"),
    )
    op.create_index("ix_model_alias_versions_alias_pk", "model_alias_versions", ["alias_id", "pk"])


def downgrade() -> None:
    op.drop_index("ix_model_alias_versions_alias_pk", table_name="model_alias_versions")
    op.drop_table("model_alias_versions")
    op.drop_table("model_aliases")
