"""The PostgreSQL schema: versioned migrations, applied under an advisory lock so that gateway
processes starting at once apply each version exactly once."""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

Connection = psycopg.AsyncConnection[TupleRow]

# Versioned migrations: index i brings the schema to version i + 1. Never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'active',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        models TEXT[],
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
    CREATE TABLE usage_ledger (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        api TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        ttft_s DOUBLE PRECISION,
        error_code TEXT,
        cost_pico BIGINT NOT NULL DEFAULT 0,
        price_version TEXT
    );
    CREATE INDEX usage_ledger_tenant_time ON usage_ledger (tenant_id, started_at);
    CREATE INDEX usage_ledger_time ON usage_ledger (started_at);
    """,
    """
    ALTER TABLE tenants ADD COLUMN limits JSONB;
    ALTER TABLE api_keys ADD COLUMN limits JSONB;
    """,
    # Metering, part 2 (as in SQLite's migration 4).
    """
    ALTER TABLE usage_ledger ADD COLUMN cached_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE usage_ledger ADD COLUMN choices INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE usage_ledger ADD COLUMN service_tier TEXT;
    ALTER TABLE usage_ledger ADD COLUMN adjusts TEXT;
    ALTER TABLE usage_ledger ADD COLUMN seq BIGSERIAL;
    CREATE UNIQUE INDEX usage_ledger_seq ON usage_ledger (seq);
    CREATE INDEX usage_ledger_endpoint_end ON usage_ledger (endpoint, ended_at);
    CREATE TABLE engine_counters (
        engine TEXT PRIMARY KEY,
        incarnation DOUBLE PRECISION NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        generation_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        prefix_hits BIGINT NOT NULL,
        prefix_queries BIGINT NOT NULL,
        sampled_at DOUBLE PRECISION NOT NULL,
        quiet_at DOUBLE PRECISION,
        open_prompt_tokens BIGINT NOT NULL DEFAULT 0,
        open_generation_tokens BIGINT NOT NULL DEFAULT 0,
        open_cached_tokens BIGINT NOT NULL DEFAULT 0,
        open_resets INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE engine_usage (
        engine TEXT NOT NULL,
        hour DOUBLE PRECISION NOT NULL,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        generation_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        prefix_hits BIGINT NOT NULL DEFAULT 0,
        prefix_queries BIGINT NOT NULL DEFAULT 0,
        resets INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (engine, hour)
    );
    CREATE TABLE reconcile_periods (
        engine TEXT NOT NULL,
        start_at DOUBLE PRECISION NOT NULL,
        end_at DOUBLE PRECISION NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        generation_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        resets INTEGER NOT NULL DEFAULT 0,
        settled_at DOUBLE PRECISION,
        ledger_prompt_tokens BIGINT,
        ledger_generation_tokens BIGINT,
        ledger_cached_tokens BIGINT,
        adjusted_prompt_tokens BIGINT,
        adjusted_generation_tokens BIGINT,
        carry_prompt_tokens BIGINT,
        carry_generation_tokens BIGINT,
        PRIMARY KEY (engine, end_at)
    );
    CREATE INDEX reconcile_periods_open ON reconcile_periods (end_at) WHERE settled_at IS NULL;
    CREATE TABLE outbox_cursors (
        name TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
]

# Any constant shared by every gateway process will do; this one spells "gw-migrate".
_MIGRATION_LOCK = 0x67772D6D69677261


async def migrate(conn: Connection) -> None:
    """Bring the schema to the latest version; concurrent callers queue on the advisory lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        row = await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")).fetchone()
        current = int(row[0]) if row is not None else 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
