"""what Twilio reports of a call after it is placed: the bridged leg of a connect answer, the
recording, and how long a business keeps recordings

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 05:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bridged_call_sid", sa.String(length=34), nullable=True))
        batch_op.add_column(sa.Column("bridged_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("bridged_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("recording_sid", sa.String(length=34), nullable=True))
        batch_op.add_column(sa.Column("recording_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("recording_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("recording_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("recording_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_call_attempts_recording_sid", ["recording_sid"], unique=True)
    with op.batch_alter_table("businesses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recording_retention_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("businesses", schema=None) as batch_op:
        batch_op.drop_column("recording_retention_days")
    with op.batch_alter_table("call_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_call_attempts_recording_sid")
        for name in (
            "recording_at",
            "recording_url",
            "recording_seconds",
            "recording_status",
            "recording_sid",
            "bridged_seconds",
            "bridged_status",
            "bridged_call_sid",
        ):
            batch_op.drop_column(name)
