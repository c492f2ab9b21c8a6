"""outbox: a partial index of the undelivered rows, in id order

The worker asks for the oldest due rows, 500 at a time. Through the (delivered_at, next_at)
index every batch sorted the whole backlog first, so a campaign dialing faster than its
callbacks were delivered slowed down as the backlog grew; walking this index in id order
stops after 500.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNDELIVERED = sa.text("delivered_at IS NULL")


def upgrade() -> None:
    op.drop_index("ix_outbox_delivered_at_next_at", "outbox")
    op.create_index(
        "ix_outbox_undelivered",
        "outbox",
        ["id"],
        sqlite_where=UNDELIVERED,
        postgresql_where=UNDELIVERED,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_undelivered", "outbox")
    op.create_index("ix_outbox_delivered_at_next_at", "outbox", ["delivered_at", "next_at"])
