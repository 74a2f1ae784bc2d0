"""cost ledger: baseline cost, tag sets, daily rollups, budgets, cost views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

- attempts.baseline_cost_usd: what the job's baseline model would have cost (successful rows only).
- attempts.tag_set: hash of the canonical tag set; tag_set_items holds its key/value pairs, so tag
  queries are joins on both Postgres and SQLite.
- cost_rollup_daily: totals per day x tenant x job x model x provider x latency x domain x tag set
  x writer shard, kept current by the ledger writes; backfilled here from existing attempts.
- budgets (per tag value), budget_reservations (one row per dispatched request), jobs.pause_reason.
- views v_cost_by_job, v_cost_by_tag, v_cost_by_model_day over the rollups (same SQL on both).
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString
# Frozen copy of batchroute.tables.ATTEMPT_DRILLDOWN_COLUMNS at this revision.
_COVER = ("status", "usage_estimated", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
          "baseline_cost_usd", "created_at", "provider", "domain", "latency_class")
_SUMS = ("attempts", "requests", "failed_attempts", "estimated_attempts", "prompt_tokens", "completion_tokens",
         "cached_tokens", "cost_usd", "baseline_cost_usd")
# Postgres sums BIGINT to NUMERIC; cast counts back so both databases return integers.
_TOTALS = """CAST(SUM(r.attempts) AS BIGINT) AS attempts, CAST(SUM(r.requests) AS BIGINT) AS requests,
  CAST(SUM(r.failed_attempts) AS BIGINT) AS failed_attempts, CAST(SUM(r.prompt_tokens) AS BIGINT) AS prompt_tokens,
  CAST(SUM(r.completion_tokens) AS BIGINT) AS completion_tokens,
  CAST(SUM(r.cached_tokens) AS BIGINT) AS cached_tokens, SUM(r.cost_usd) AS cost_usd,
  SUM(r.baseline_cost_usd) AS baseline_cost_usd, SUM(r.baseline_cost_usd) - SUM(r.cost_usd) AS savings_usd,
  CASE WHEN SUM(r.baseline_cost_usd) > 0
       THEN 100.0 * (SUM(r.baseline_cost_usd) - SUM(r.cost_usd)) / SUM(r.baseline_cost_usd) END AS savings_pct"""
VIEWS = {
    "v_cost_by_job": f"""SELECT r.job_id, r.tenant, MIN(r.day) AS first_day, MAX(r.day) AS last_day, {_TOTALS}
FROM cost_rollup_daily r GROUP BY r.job_id, r.tenant""",
    "v_cost_by_tag": f"""SELECT t.key AS tag_key, t.value AS tag_value, r.day, r.tenant, {_TOTALS}
FROM cost_rollup_daily r JOIN tag_set_items t ON t.tag_set = r.tag_set
GROUP BY t.key, t.value, r.day, r.tenant""",
    "v_cost_by_model_day": f"""SELECT r.day, r.model, r.provider, {_TOTALS}
FROM cost_rollup_daily r GROUP BY r.day, r.model, r.provider""",
}


def _tag_set_id(tags: dict) -> str:
    # Frozen copy of batchroute.rollups.tag_set_id (stored values must never change).
    if not tags:
        return ""
    canonical = json.dumps({str(k): str(v) for k, v in tags.items()}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _backfill(bind: sa.engine.Connection) -> None:
    dialect = bind.dialect.name
    texts = [t for (t,) in bind.execute(sa.text("SELECT DISTINCT CAST(tags AS TEXT) FROM attempts"))]
    items = set()
    for t in texts:
        tags = json.loads(t) if t else {}
        ts = _tag_set_id(tags)
        if ts:
            bind.execute(sa.text("UPDATE attempts SET tag_set = :ts WHERE CAST(tags AS TEXT) = :t"), {"ts": ts, "t": t})
            items.update((ts, str(k), str(v)) for k, v in tags.items())
    for ts, k, v in sorted(items):
        bind.execute(sa.text("INSERT INTO tag_set_items (tag_set, key, value) VALUES (:ts, :k, :v)"),
                     {"ts": ts, "k": k, "v": v})
    day = "CAST((created_at AT TIME ZONE 'UTC') AS DATE)" if dialect == "postgresql" else "date(created_at)"
    keys = [day, "tenant", "job_id", "model", "provider", "COALESCE(latency_class, '')", "COALESCE(domain, '')",
            "tag_set"]
    bind.execute(sa.text(
        "INSERT INTO cost_rollup_daily (day, tenant, job_id, model, provider, latency_class, domain, tag_set, shard, "
        f"{', '.join(_SUMS)}) SELECT {', '.join(keys)}, 0, COUNT(*), "
        "SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), "
        "SUM(CASE WHEN usage_estimated THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens), "
        f"SUM(cached_tokens), SUM(cost_usd), SUM(baseline_cost_usd) FROM attempts GROUP BY {', '.join(keys)}"))


def upgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('baseline_cost_usd', sa.Float(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('tag_set', _S(length=32), nullable=False, server_default=''))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_reason', sa.Text(), nullable=True))

    op.create_table('tag_set_items',
    sa.Column('tag_set', _S(length=32), nullable=False),
    sa.Column('key', _S(), nullable=False),
    sa.Column('value', _S(), nullable=False),
    sa.PrimaryKeyConstraint('tag_set', 'key')
    )
    with op.batch_alter_table('tag_set_items', schema=None) as batch_op:
        batch_op.create_index('ix_tag_set_items_key_value', ['key', 'value'], unique=False)

    op.create_table('cost_rollup_daily',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('tenant', _S(length=100), nullable=False),
    sa.Column('job_id', _S(length=40), nullable=False),
    sa.Column('model', _S(length=200), nullable=False),
    sa.Column('provider', _S(length=100), nullable=False),
    sa.Column('latency_class', _S(length=16), nullable=False),
    sa.Column('domain', _S(length=32), nullable=False),
    sa.Column('tag_set', _S(length=32), nullable=False),
    sa.Column('shard', sa.SmallInteger(), nullable=False),
    sa.Column('attempts', sa.BigInteger(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('failed_attempts', sa.BigInteger(), nullable=False),
    sa.Column('estimated_attempts', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('baseline_cost_usd', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'tenant', 'job_id', 'model', 'provider', 'latency_class', 'domain', 'tag_set',
                            'shard')
    )
    with op.batch_alter_table('cost_rollup_daily', schema=None) as batch_op:
        batch_op.create_index('ix_cost_rollup_job_day', ['job_id', 'day'], unique=False)
        batch_op.create_index('ix_cost_rollup_tag_set_day', ['tag_set', 'day'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # Rollup rows are updated in place all day: leave room for HOT updates (no index churn).
        op.execute("ALTER TABLE cost_rollup_daily SET (fillfactor = 70)")

    op.create_table('budgets',
    sa.Column('scope', _S(length=16), nullable=False),
    sa.Column('key', _S(), nullable=False),
    sa.Column('value', _S(), nullable=False),
    sa.Column('limit_usd', sa.Float(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'key', 'value')
    )

    op.create_table('budget_reservations',
    sa.Column('request_id', _S(length=60), nullable=False),
    sa.Column('job_id', _S(length=40), nullable=False),
    sa.Column('tag_set', _S(length=32), nullable=False),
    sa.Column('amount_usd', sa.Float(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('request_id')
    )
    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_budget_reservations_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_budget_reservations_tag_set'), ['tag_set'], unique=False)

    if op.get_bind().dialect.name == 'postgresql':
        # One job's drill-down becomes an index-only scan (same key, so the old index is replaced).
        op.execute("DROP INDEX ix_attempts_job_model")
        op.execute(f"CREATE INDEX ix_attempts_job_model ON attempts (job_id, model) INCLUDE ({', '.join(_COVER)})")
        # Index-only scans need the visibility map: vacuum the insert-only ledger every 2% new rows.
        op.execute("ALTER TABLE attempts SET (autovacuum_vacuum_insert_scale_factor = 0.02)")

    _backfill(op.get_bind())
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE attempts RESET (autovacuum_vacuum_insert_scale_factor)")
        op.execute("DROP INDEX ix_attempts_job_model")
        op.execute("CREATE INDEX ix_attempts_job_model ON attempts (job_id, model)")
    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_budget_reservations_tag_set'))
        batch_op.drop_index(batch_op.f('ix_budget_reservations_job_id'))
    op.drop_table('budget_reservations')
    op.drop_table('budgets')
    with op.batch_alter_table('cost_rollup_daily', schema=None) as batch_op:
        batch_op.drop_index('ix_cost_rollup_tag_set_day')
        batch_op.drop_index('ix_cost_rollup_job_day')
    op.drop_table('cost_rollup_daily')
    with op.batch_alter_table('tag_set_items', schema=None) as batch_op:
        batch_op.drop_index('ix_tag_set_items_key_value')
    op.drop_table('tag_set_items')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('pause_reason')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_column('tag_set')
        batch_op.drop_column('baseline_cost_usd')
