"""profile snapshots

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- profile_snapshots: the profiler's live per-model figures (decayed attempts by outcome, error and
  429 rates, latency ratio, p50/p95/p99 latency, health) as taken by provider workers every
  ``BATCHROUTE_PROFILE_SNAPSHOT_S``; read by ``batchroute profile --history``.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "profile_snapshots",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("taken_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("model", _S(length=200), nullable=False),
        sa.Column("source", _S(length=200), nullable=False),
        sa.Column("ok", sa.Float(), nullable=False),
        sa.Column("errors", sa.Float(), nullable=False),
        sa.Column("timeouts", sa.Float(), nullable=False),
        sa.Column("rate_limited", sa.Float(), nullable=False),
        sa.Column("latency_samples", sa.Float(), nullable=False),
        sa.Column("error_rate", sa.Float(), nullable=True),
        sa.Column("rate_429", sa.Float(), nullable=True),
        sa.Column("latency_ratio", sa.Float(), nullable=True),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("unhealthy", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_profile_snapshots_model_taken", "profile_snapshots", ["model", "taken_at"])
    op.create_index("ix_profile_snapshots_taken", "profile_snapshots", ["taken_at"])


def downgrade() -> None:
    op.drop_index("ix_profile_snapshots_taken", table_name="profile_snapshots")
    op.drop_index("ix_profile_snapshots_model_taken", table_name="profile_snapshots")
    op.drop_table("profile_snapshots")
