"""records and attempts

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("strategy", sa.String(200), nullable=False),
        sa.Column("record_id", sa.String(500), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("call_id", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("strategy", "record_id", name="pk_records"),
    )
    op.create_index("ix_records_state", "records", ["state"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(200), nullable=False),
        sa.Column("record_id", sa.String(500), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("call_id", sa.String(200)),
        sa.Column("reason", sa.String(500)),
        sa.Column("duration", sa.Float()),
        sa.Column("dialed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
        sa.UniqueConstraint(
            "strategy", "record_id", "number", name="uq_attempts_strategy_record_id_number"
        ),
    )
    op.create_index("ix_attempts_phone", "attempts", ["phone"])
    op.create_index("ix_attempts_state", "attempts", ["state"])


def downgrade() -> None:
    op.drop_index("ix_attempts_state", "attempts")
    op.drop_index("ix_attempts_phone", "attempts")
    op.drop_table("attempts")
    op.drop_index("ix_records_state", "records")
    op.drop_table("records")
