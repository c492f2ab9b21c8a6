"""outbox: strategy callbacks delivered from committed rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("strategy", sa.String(200), nullable=False),
        sa.Column("record_id", sa.String(500), nullable=False),
        sa.Column("callback", sa.String(40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(500)),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_delivered_at_next_at", "outbox", ["delivered_at", "next_at"])
    op.create_index("ix_outbox_strategy_record_id_id", "outbox", ["strategy", "record_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_strategy_record_id_id", "outbox")
    op.drop_index("ix_outbox_delivered_at_next_at", "outbox")
    op.drop_table("outbox")
