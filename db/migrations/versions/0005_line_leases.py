"""line leases: the hard per-business line cap, one row per line in use

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "line_leases",
        sa.Column("business_id", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("lead_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["business_id"], ["businesses.id"], name=op.f("fk_line_leases_business_id_businesses")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_line_leases_run_id_runs")),
        sa.PrimaryKeyConstraint("business_id", "slot", name=op.f("pk_line_leases")),
        sa.UniqueConstraint("run_id", "lead_id", "attempt", name="uq_line_leases_attempt"),
    )
    op.create_index("ix_line_leases_run_id", "line_leases", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_line_leases_run_id", table_name="line_leases")
    op.drop_table("line_leases")
