"""Stage 4's jobs page: two columns of the jobs table, run_at and retry_of.

run_at is a deferred job's run time; retry_of the job a retry retries, unique: one retry per
old job, however many clicks ask for it.

Revision ID: 0003_run_at_retry_of
Revises: 0002_attempts
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_run_at_retry_of"
down_revision: str | Sequence[str] | None = "0002_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retry_of", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("jobs_retry_of_key", ["retry_of"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("jobs_retry_of_key", type_="unique")
        batch_op.drop_column("retry_of")
        batch_op.drop_column("run_at")
