"""what an answered call does: a business's default answer, and its registered agent numbers

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("businesses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("answer_secret", sa.String(length=100), nullable=True))
    op.create_table(
        "agent_numbers",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("business_id", sa.String(length=32), nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["business_id"], ["businesses.id"], name=op.f("fk_agent_numbers_business_id_businesses")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_numbers")),
        sa.UniqueConstraint("business_id", "phone", name="uq_agent_numbers_business_phone"),
    )


def downgrade() -> None:
    op.drop_table("agent_numbers")
    with op.batch_alter_table("businesses", schema=None) as batch_op:
        batch_op.drop_column("answer_secret")
    with op.batch_alter_table("businesses", schema=None) as batch_op:
        batch_op.drop_column("answer")
