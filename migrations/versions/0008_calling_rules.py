"""calling rules: the evidence of each dial; why queued records wait

`attempts.evidence` (JSON) keeps what the calling rules saw when the attempt was dialed: the
rule pack and its version, the callee's zones and local time, when the do-not-call list was
last read, the caller id, and the per-number cap counts; `attempts.refused`, that the callee
refused (the cool-down of the per-number caps). `sources.waiting_reasons` (JSON)
counts the records waiting in the hub, by reason, as of its last poll.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("evidence", sa.Text()))
        batch.add_column(sa.Column("refused", sa.Boolean()))
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("waiting_reasons", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("waiting_reasons")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("refused")
        batch.drop_column("evidence")
