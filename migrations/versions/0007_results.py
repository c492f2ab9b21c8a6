"""results: what the callee answered; the do-not-call list

`attempts` keeps each call's results (the result tools the agent called, as JSON), its
transcript (JSON) and when the call started. `do_not_call` holds numbers never to be dialed
again: an opt-out result adds the callee's number, shared by every strategy.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("results", sa.Text()))
        batch.add_column(sa.Column("transcript", sa.Text()))
    op.create_table(
        "do_not_call",
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("strategy", sa.String(200)),
        sa.Column("record_id", sa.String(500)),
        sa.Column("attempt_id", sa.String(64)),
        sa.Column("reason", sa.String(500)),
        sa.PrimaryKeyConstraint("phone", name="pk_do_not_call"),
    )


def downgrade() -> None:
    op.drop_table("do_not_call")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("transcript")
        batch.drop_column("results")
        batch.drop_column("started_at")
