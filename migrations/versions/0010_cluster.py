"""cluster: several daemons on one PostgreSQL

`outbox.owner` names the daemon (`instances.id`) that wrote a row: each daemon delivers its
own rows, and the rows of a daemon that is gone are delivered by the others.
`instances.cluster` says whether a daemon runs with `[cluster] enabled`: one that does not
never shares the store. An index on `attempts.dialed_at` serves the claims' count of the dial
starts in the rate window.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("owner", sa.String(64)))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("cluster", sa.Boolean()))
    op.create_index("ix_attempts_dialed_at", "attempts", ["dialed_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_dialed_at", table_name="attempts")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("cluster")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("owner")
