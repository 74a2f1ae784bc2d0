"""job plans and feedback

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

- jobs.plan: the planner's predicted cost-quality curve and chosen point (JSON) for jobs with a goal.
- feedback: observed outcomes of requests on models (``batchroute feedback``); the analyzer adds
  them to its index as outcome exemplars.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("plan", sa.JSON(), nullable=True))
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", _S(length=60), sa.ForeignKey("requests.id"), nullable=False),
        sa.Column("model", _S(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_request_id", table_name="feedback")
    op.drop_table("feedback")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("plan")
