"""pause: operators stop new dials without stopping the daemon

`controls` holds one row per paused strategy (`strategy` "*": every strategy), written by
`dispatch pause` and deleted by `dispatch resume`; a running hub reads it at most every poll
interval and dials no new record of a paused strategy (calls in flight finish).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controls",
        sa.Column("strategy", sa.String(200), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.PrimaryKeyConstraint("strategy", name="pk_controls"),
    )


def downgrade() -> None:
    op.drop_table("controls")
